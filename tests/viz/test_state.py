"""The graph view's state survives the URL, and a mangled URL never raises."""

from circuitlab.viz.state import ViewState, from_store, to_store


def test_round_trip():
    state = ViewState(
        mode="input",
        values=(37, 75),
        node_fraction=0.5,
        min_weight=0.0125,
        pinned=["F0.3@2", "T37@0"],
        groups={"trig pair": ["F0.3@2", "F0.17@2"]},
        clicked="F0.3@2",
        subgraph=True,
    )
    assert ViewState.from_query(state.to_query()) == state
    assert ViewState().to_query() == ""
    assert ViewState.from_query("") == ViewState()


def test_garbage_falls_back_to_defaults():
    state = ViewState.from_query(
        "?mode=evil&input=1,x&node=7&edge=-1&pinned=,,a,a&groups=:x;<b>:|&sub=yes&clicked="
        + "z" * 500
    )
    assert state.mode == "circuit" and state.values is None
    assert state.node_fraction == 0.8 and state.min_weight == 0.0
    assert state.pinned == ["a"] and state.groups == {} and not state.subgraph
    assert len(state.clicked) == 100
    assert ViewState.from_query("?edge=nan&node=inf").min_weight == 0.0


def test_store_round_trip():
    state = ViewState(values=(1, 2), pinned=["a"], groups={"g": ["a", "b"]})
    data = to_store(state, rev=3)
    assert data["rev"] == 3 and from_store(data) == state

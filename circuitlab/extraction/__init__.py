"""Circuit extraction: activations, transcoders, attribution graphs, circuits, interpretation."""

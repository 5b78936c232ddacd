"""Circuit extraction: activations, transcoders, attribution graphs, circuits, interpretation.

    from circuitlab.extraction import extract
    result = extract("runs/add_mod_113/fast-seed0", "sqlite:///catalog.db")

Importing this package pulls in torch; the pieces can also be used one by one (see
`pipeline.py` for the order).
"""

from circuitlab.extraction.activations import collect, mlp_activations, task_tokens
from circuitlab.extraction.artifact import Circuit, CircuitLoadError
from circuitlab.extraction.attribution import AttributionConfig, attribute
from circuitlab.extraction.circuit import Faithfulness, measure, select_circuit
from circuitlab.extraction.circuit_components import ComponentScores, circuit_components
from circuitlab.extraction.fourier import FourierReport, key_frequencies, unit_frequencies
from circuitlab.extraction.fourier_fits import analyze as fourier_analysis
from circuitlab.extraction.graph import AttributionGraph, node_influence, prune_graph, scores_of
from circuitlab.extraction.graph_json import to_circuit_tracer_json
from circuitlab.extraction.interface import InterfaceDefinition, infer_interface
from circuitlab.extraction.interpret import FeatureInterpretation, interpret_features
from circuitlab.extraction.pipeline import ExtractConfig, ExtractionError, ExtractResult, extract
from circuitlab.extraction.transcoder import Transcoder, TranscoderConfig, evaluate
from circuitlab.extraction.transcoder_train import train_transcoder

__all__ = [
    "AttributionConfig",
    "AttributionGraph",
    "Circuit",
    "CircuitLoadError",
    "ComponentScores",
    "ExtractConfig",
    "ExtractResult",
    "ExtractionError",
    "Faithfulness",
    "FeatureInterpretation",
    "FourierReport",
    "InterfaceDefinition",
    "Transcoder",
    "TranscoderConfig",
    "attribute",
    "circuit_components",
    "collect",
    "evaluate",
    "extract",
    "fourier_analysis",
    "infer_interface",
    "interpret_features",
    "key_frequencies",
    "measure",
    "mlp_activations",
    "node_influence",
    "prune_graph",
    "scores_of",
    "select_circuit",
    "task_tokens",
    "to_circuit_tracer_json",
    "train_transcoder",
    "unit_frequencies",
]

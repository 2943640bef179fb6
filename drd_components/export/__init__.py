"""Export of DRD students: TorchScript and ONNX (dynamic batch axis), with parity checks."""

from drd_components.export.bundle import bundle_input_shape, bundle_parser, load_bundle_network, load_state_dict_file
from drd_components.export.onnx_export import ONNX_EXPORTERS, export_onnx, onnx_parity
from drd_components.export.pipeline import EXPORT_FORMATS, export_student
from drd_components.export.torchscript import TORCHSCRIPT_METHODS, export_torchscript, torchscript_parity

"""MONAI Deploy application: a DRD student exported as a TorchScript bundle segments a NIfTI volume.

Pipeline (Holoscan operators of monai-deploy-app-sdk):
``NiftiDataLoader`` (input file) -> ``MonaiBundleInferenceOperator`` (the bundle's ``preprocessing``,
``inferer`` and ``postprocessing`` from ``inference.json`` stored inside the TorchScript archive, the
student network itself from the archive) -> :class:`NiftiSegWriter` (``<output>/<input stem>_seg.nii.gz``).

The model is a TorchScript file written by ``tools/export_student.py --format torchscript`` (or
``monai.bundle ckpt_export``): it carries ``metadata.json`` and ``inference.json`` as extra files.

Usage (local run, no container):
    python integrations/monai_deploy/app.py -i /data/case.nii.gz -o /data/out -m bundles/<bundle>/models/model.ts
or with the Holoscan environment variables HOLOSCAN_INPUT_PATH / HOLOSCAN_OUTPUT_PATH / HOLOSCAN_MODEL_PATH.
Packaging as a MAP: see README.md (``monai-deploy package``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Fragment, Image, IOType, Operator, OperatorSpec
from monai.deploy.operators import BundleConfigNames, IOMapping, MonaiBundleInferenceOperator, NiftiDataLoader


class NiftiSegWriter(Operator):
    """Save the received label ``Image`` as ``<output_folder>/<stem>_seg.nii.gz`` (uint8, axes back in
    the NIfTI (x, y, z) order of the input), with the affine from the image metadata when there is one."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, stem: str, **kwargs) -> None:
        self.output_folder = Path(output_folder)
        self.stem = stem
        self.input_name = "seg_image"
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.input_name)  # default condition: tick only when a label image arrives

    def compute(self, op_input, op_output, context) -> None:
        import nibabel as nib

        image = op_input.receive(self.input_name)
        if image is None:
            return
        data = image.asnumpy() if isinstance(image, Image) else np.asarray(image)
        meta = image.metadata() if isinstance(image, Image) else {}
        data = np.squeeze(np.asarray(data)).astype(np.uint8)
        if data.ndim == 3:
            # the bundle operator hands 3D label Images out in the SDK's DICOM/SimpleITK order (z, y, x)
            data = np.swapaxes(data, 0, 2)
        affine = np.asarray(meta.get("affine", np.eye(4)), dtype=np.float64)
        affine = affine if affine.shape == (4, 4) else np.eye(4)
        self.output_folder.mkdir(parents=True, exist_ok=True)
        path = self.output_folder / f"{self.stem}_seg.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(path))
        logging.getLogger(__name__).info(f"wrote {path} {data.shape}")


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


class DRDSegmentationApp(Application):
    """NIfTI in, NIfTI label map out, through a DRD student TorchScript bundle."""

    def compose(self) -> None:
        context: AppContext = Application.init_app_context(self.argv)
        input_path = Path(context.input_path)
        if input_path.is_dir():
            files = sorted(p for p in input_path.iterdir() if p.name.endswith((".nii", ".nii.gz")))
            if len(files) != 1:
                raise ValueError(f"{input_path} must hold exactly one .nii/.nii.gz file, found {len(files)}.")
            input_path = files[0]
        model_path = Path(context.model_path)
        if model_path.is_dir():
            model_path = model_path / "model.ts"
        if not model_path.is_file():
            raise FileNotFoundError(f"TorchScript bundle not found: {model_path} (export it with tools/export_student.py).")
        loader = NiftiDataLoader(self, CountCondition(self, 1), input_path=input_path, name="nifti_loader")
        infer = MonaiBundleInferenceOperator(
            self,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            app_context=context,
            bundle_config_names=BundleConfigNames(config_names=["inference"]),
            bundle_path=model_path,
            name="drd_bundle_inference",
        )
        writer = NiftiSegWriter(self, output_folder=Path(context.output_path), stem=_stem(input_path), name="nifti_writer")
        self.add_flow(loader, infer, {("image", "image")})
        self.add_flow(infer, writer, {("pred", "seg_image")})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    DRDSegmentationApp().run()

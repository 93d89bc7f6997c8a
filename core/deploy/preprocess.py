"""What a shipped model expects of an image, recorded with the model so that predict needs nothing else.

Why: a model file alone does not say that its input is a 28x28 grayscale image
normalised by Fashion-MNIST's mean and std. The record travels in three
places: the ONNX file's ``metadata_props`` (key ``mentor.preprocess``), the
MLflow model's ``metadata`` (same key), and ``preprocess.json`` beside exported
files. ``mentor predict`` reads it back and decodes images by the same rules as
an unlabeled pool (``mentor.data.pool``: luma/repeat for channels, shorter side
resized then centre-cropped), then normalises with the recorded statistics.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

KEY = "mentor.preprocess"
RULES = "decode; channels by ITU-R 601 luma or repeat; shorter side resized (bilinear, antialiased) " \
    "then centre-cropped to height x width; x / 255; (x - mean) / std per channel"


@dataclass(frozen=True)
class Preprocess:
    """Channels, size and normalisation a model was trained with, and its class names.

    A model of another modality than images records ``modality`` (its registered name), ``channels`` the
    length of an example's dimension 1, height and width 0, and the ``details`` its data source gave
    (``DataInfo.details``: what ``mentor predict`` needs to read its inputs, such as column names)."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    num_classes: int = 0
    rules: str = field(default=RULES)
    modality: str = "image"
    details: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def label(self, index: int) -> str:
        """The class name of output ``index`` (its number when the data has no names)."""
        return self.class_names[index] if index < len(self.class_names) else str(index)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["mean"], data["std"], data["class_names"] = list(self.mean), list(self.std), list(self.class_names)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        try:
            return cls(channels=int(data["channels"]), height=int(data["height"]), width=int(data["width"]),
                       mean=tuple(float(m) for m in data["mean"]), std=tuple(float(s) for s in data["std"]),
                       class_names=tuple(str(c) for c in data.get("class_names", ())),
                       num_classes=int(data.get("num_classes", 0)), rules=str(data.get("rules", RULES)),
                       modality=str(data.get("modality", "image")), details=dict(data.get("details") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a mentor preprocessing record ({type(exc).__name__}: {exc})") from None

    @classmethod
    def from_json(cls, text: str) -> Preprocess:
        return cls.from_dict(json.loads(text))

    # -- inside an ONNX file --------------------------------------------------------
    def attach(self, model_proto) -> None:
        """Write the record into an ``onnx.ModelProto``'s metadata (replacing an older one)."""
        props = [p for p in model_proto.metadata_props if p.key != KEY]
        del model_proto.metadata_props[:]
        model_proto.metadata_props.extend(props)
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = KEY, json.dumps(self.to_dict())

    @classmethod
    def from_onnx_metadata(cls, metadata: dict[str, str]) -> Preprocess | None:
        """The record from an ONNX file's metadata map (onnxruntime's ``custom_metadata_map``), or None."""
        text = metadata.get(KEY)
        return None if text is None else cls.from_json(text)

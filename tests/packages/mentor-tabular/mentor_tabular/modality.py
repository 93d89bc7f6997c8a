"""The tabular modality: float32 feature vectors [N, F], noise augmentation, tables for predict."""

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

import mentor
from mentor import hookimpl

SUFFIXES = (".csv", ".parquet")


@dataclass
class NoiseDraw(mentor.AugmentDraw):
    """Per row: Gaussian noise in units of each feature's std, and which features are kept."""

    noise: torch.Tensor | None = None
    keep: torch.Tensor | None = None


class FeatureNoise:
    """Tabular augmentation: add ``sigma`` std of noise to every feature and replace a share ``drop`` of them
    by the feature's mean. A draw then an apply, so that the teacher cache can rebuild a recorded view."""

    active = True

    def __init__(self, sigma: float, drop: float, mean, std):
        self.sigma, self.drop = sigma, drop
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)

    def draw(self, n, generator=None, device="cpu") -> NoiseDraw:
        features = len(self.mean)
        noise = torch.randn(n, features, generator=generator, device=device) * self.sigma
        keep = torch.rand(n, features, generator=generator, device=device) >= self.drop
        return NoiseDraw(noise=noise, keep=keep)

    def apply(self, x: torch.Tensor, draw: NoiseDraw) -> torch.Tensor:
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return torch.where(draw.keep, x, mean) + draw.noise * std


class Tabular(mentor.Modality):
    """Feature vectors: float32 [N, F]; a table's columns for predict."""

    input_name = "features"

    def augmenter(self, cfg, info):
        """``randaugment`` is the strong view here: noise of magnitude/10 std and num_ops/10 of the features
        dropped; crop and flip mean nothing for a feature vector (the base class refuses them)."""
        strong = cfg.randaugment if cfg is not None else None
        if cfg is not None and (cfg.crop_padding or cfg.flip):
            raise ValueError("feature vectors have no crop or flip: use randaugment for noise")
        if strong is None:
            return None
        return FeatureNoise(strong.magnitude / 10, min(strong.num_ops / 10, 0.9), info.mean, info.std)

    def predict_batches(self, sources, record, batch_size):
        """Rows of .csv and .parquet files (or folders of them) with the model's feature columns; a row
        with a missing or non-numeric value is skipped and reported as ``file:row``."""
        columns = list(record.details.get("features", ()))
        for path in _tables(sources):
            table = _read(path)
            missing = [c for c in columns if c not in table.columns]
            if missing:
                raise ValueError(f"{path} has no column {missing[0]!r} (the model reads {', '.join(columns)})")
            values = table.select(pl.col(c).cast(pl.Float32, strict=False) for c in columns)
            bad = values.select(pl.any_horizontal(pl.all().is_null() | pl.all().is_nan())).to_series()
            for start in range(0, len(values), batch_size):
                rows = range(start, min(start + batch_size, len(values)))
                good = [i for i in rows if not bad[i]]
                x = torch.from_numpy(values[good].to_numpy().astype("float32")) if good else None
                yield mentor.PredictBatch(x, [f"{path}:{i + 1}" for i in good],
                                          [(f"{path}:{i + 1}", "a missing or non-numeric value") for i in rows
                                           if bad[i]])


def _tables(sources) -> list[Path]:
    found = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES)
        elif path.suffix.lower() in SUFFIXES and path.is_file():
            found.append(path)
        else:
            raise ValueError(f"{source}: not a .csv or .parquet file, or a folder of them")
    return found


def _read(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path) if path.suffix.lower() == ".parquet" else pl.read_csv(path)


@hookimpl
def register_modalities(register):
    register("tabular", Tabular, description="feature vectors: float32 [N, F]; noise augmentation; "
             ".csv/.parquet rows for predict")

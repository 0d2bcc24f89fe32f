"""The logged model: an MLflow pyfunc that carries its preprocessing.

Raw inputs in (a DataFrame with the original feature columns for tables, arrays for
sequences and images), original labels (and class probabilities with
``params={"proba": True}``) or regression values out.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

BUNDLE = "bundle"


def _quiet_mlflow_model_logging() -> None:
    """MLflow's advice about type hints, integer columns and cloudpickle does not apply:
    the signature is inferred from a real example and the model class is our own.
    Cheap and idempotent: called per logged model, as callers may reset warning filters."""
    import logging
    import os
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for pattern in (
        r".*type hint.*",
        r".*[Tt]ype hints.*",
        r".*Inferred schema contains integer.*",
    ):
        warnings.filterwarnings("ignore", message=pattern, category=UserWarning)
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    logging.getLogger("mlflow.models.model").setLevel(logging.ERROR)


# MLflow warns about predict's type hints when the class below is defined: quiet it first.
import mlflow.pyfunc  # noqa: E402

# After the import (MLflow sets its own warning filters), before the class definition.
_quiet_mlflow_model_logging()


class SweepModel(mlflow.pyfunc.PythonModel):
    """Network weights + model config + fitted preprocessor, rebuilt at load time."""

    # Our predict validates its own input (the preprocessor names missing columns);
    # MLflow's type-hint wrapper would only warn that there are no hints.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch

        from sweep.models.networks import build_network

        bundle = torch.load(context.artifacts[BUNDLE], map_location="cpu", weights_only=False)
        self.preprocessor = bundle["preprocessor"]
        self.task = bundle["task"]
        self.network = build_network(
            bundle["model_cfg"], tuple(bundle["input_shape"]), bundle["num_outputs"]
        )
        self.network.load_state_dict(bundle["state_dict"])
        self.network.eval()

    def predict(self, context, model_input, params=None):  # no hints: MLflow reads them
        import torch
        from mlflow.exceptions import MlflowException

        try:
            x = self.preprocessor.transform(_as_input(model_input, self.preprocessor))
            _require_finite(x)
        except (ValueError, KeyError, TypeError) as exc:
            # A clean 400 from the model server instead of a stack trace.
            raise MlflowException.invalid_parameter_value(f"bad input: {exc}") from None
        with torch.no_grad():
            out = self.network(torch.from_numpy(x)).float()
        if self.task == "regression":
            values = self.preprocessor.decode_target(out.squeeze(-1).numpy())
            return pd.DataFrame({"prediction": values})
        probs = torch.softmax(out, dim=1).numpy()
        frame = pd.DataFrame({"prediction": self.preprocessor.decode_target(probs.argmax(1))})
        if params and params.get("proba"):
            for i, label in enumerate(self.preprocessor.classes):
                frame[f"proba_{label}"] = probs[:, i]
        return frame


def _as_input(model_input: Any, preprocessor: Any) -> Any:
    """Tables stay DataFrames; array models take arrays (a DataFrame's values or a list)."""
    if hasattr(preprocessor, "feature_columns"):
        if not isinstance(model_input, pd.DataFrame):
            raise ValueError("expected a table (DataFrame) with the feature columns")
        return model_input
    if isinstance(model_input, pd.DataFrame):
        return model_input.to_numpy(dtype=np.float32)
    if isinstance(model_input, dict):
        model_input = next(iter(model_input.values()))
    return np.asarray(model_input, dtype=np.float32)


def _require_finite(x: np.ndarray) -> None:
    """Refuse an empty input, and NaN / inf network inputs: they would come out as a
    confident-looking label.

    A table's preprocessor imputes missing numbers and names the column of an infinite one
    or one too large for float32, so this catches network inputs (arrays) holding NaN, inf
    or a number too large for float32 (1e300 becomes inf)."""
    if len(x) == 0:
        raise ValueError("no rows to predict")
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"row {row} (0-based) holds NaN, inf or a number too large for float32; "
            f"{int((~finite).sum())} such row(s) in all"
        )


def _features_as_any(signature: Any, preprocessor: Any) -> Any:
    """The signature with table feature columns typed ``any``: the preprocessor checks them.

    MLflow enforces the signature before ``predict``. A ``long`` column (an int column in
    the example) makes the model server reject null and silently truncate 2.5 to 2; a
    ``double`` one makes a local ``predict`` reject a pandas int64 column. The preprocessor
    imputes missing values, parses numbers and numeric strings, and names the column of a
    bad value (a clean 400 from the server). Text columns are typed ``any`` too: a batch in
    which one is entirely missing arrives as float NaN, which a ``string`` column rejects,
    while the preprocessor encodes missing and unseen categories. Every feature column is
    required, as the preprocessor needs them all (MLflow marks a column optional when the
    example has a missing value in it).
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    kinds = getattr(preprocessor, "input_schema", None)
    inputs = signature.inputs
    if not kinds or inputs is None or inputs.is_tensor_spec():
        return signature
    columns = [
        ColSpec(
            AnyType() if col.name in kinds else col.type,
            col.name,
            required=col.required or col.name in kinds,
        )
        for col in inputs.inputs
    ]
    return ModelSignature(Schema(columns), signature.outputs, signature.params)


@functools.lru_cache(maxsize=1)
def pip_requirements() -> tuple[str, ...]:
    """Computed once per process: letting MLflow infer them costs ~3 s per logged model."""
    from importlib.metadata import version

    return tuple(
        f"{pkg}=={version(pkg).split('+')[0]}"
        for pkg in ("torch", "lightning", "mlflow", "numpy", "pandas", "scikit-learn")
    )


def log_model(
    network, model_cfg: dict, dataset, *, step: int = 0, params: dict[str, str] | None = None
) -> Any:
    """Log the trained network with its preprocessor into the active run as an MLflow 3
    LoggedModel; return its ``ModelInfo`` (``model_uri``, ``model_id``).

    ``step`` is the epoch whose weights the network holds: MLflow links the run's metrics
    already stored at that step to the model. ``params`` are the run's params, given
    explicitly because a run's buffered params may not be in the store yet (MLflow copies
    only the stored ones onto the model)."""
    import torch
    from mlflow.models import Model, infer_signature

    bundle = {
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "model_cfg": model_cfg,
        "input_shape": list(dataset.input_shape),
        "num_outputs": dataset.num_outputs,
        "task": dataset.task,
        "preprocessor": dataset.preprocessor,
    }
    example = dataset.input_example
    _quiet_mlflow_model_logging()  # again: other libraries may have reset the filters
    model = SweepModel()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bundle.pt"
        torch.save(bundle, path)
        model.load_context(type("Ctx", (), {"artifacts": {BUNDLE: str(path)}})())
        output = model.predict(None, example)
        signature = infer_signature(example, output, params={"proba": False})
        signature = _features_as_any(signature, dataset.preprocessor)
        # What mlflow.pyfunc.log_model does, less MLflow's serving check where it would
        # only repeat one already done (see _ServingCheckedOnce).
        info = Model.log(
            artifact_path=None,
            name="model",
            flavor=_ServingCheckedOnce,
            flavor_name="pyfunc.CustomPythonModel",
            python_model=SweepModel(),  # a fresh one: loaded weights live in the bundle
            artifacts={BUNDLE: str(path)},
            signature=signature,
            input_example=example,
            pip_requirements=list(pip_requirements()),
            params=params,
            step=step,
            validate_serving_input=_ServingCheckedOnce.first(signature, example),
        )
    return info


class _ServingCheckedOnce:
    """``mlflow.pyfunc`` as the flavor module of ``Model.log``, with MLflow's serving
    check done once per (signature, input example) in a process.

    Logging a model with an input example, MLflow turns it into a serving payload, loads
    the saved model back and predicts on the payload through the signature. That check
    depends on the example and the signature, not on the weights, so every trial of a
    study would repeat the first one's: 20 of the 70 ms that logging a model takes
    (measured on 2 cores). Later models still get ``log_model``'s own predict on the
    example, with their weights, before they are logged. ``Model.log`` reads the switch,
    ``validate_serving_input``, from the keyword arguments it hands to the flavor's
    ``save_model``; pyfunc's own does not take it, hence this module-like class.
    """

    __name__ = "mlflow.pyfunc"
    _checked: ClassVar[set[str]] = set()

    @classmethod
    def first(cls, signature: Any, example: Any) -> bool:
        """True the first time this (signature, example) is seen in this process."""
        import hashlib
        import json
        import pickle

        key = hashlib.sha256(
            json.dumps(signature.to_dict(), sort_keys=True).encode() + pickle.dumps(example)
        ).hexdigest()
        if key in cls._checked:
            return False
        cls._checked.add(key)
        return True

    @staticmethod
    def save_model(*, validate_serving_input: bool = True, **kwargs: Any) -> Any:
        return mlflow.pyfunc.save_model(**kwargs)

"""Why the service does not answer a request, in its own terms: raised by the hub, the batcher, the upload decoding
and the operations, which know nothing of HTTP; service/errors.py maps each kind to its status and error body."""

from __future__ import annotations

from typing import ClassVar

from .settings import Settings


def variable(setting: str) -> str:
    """The environment variable of a setting (a field of Settings), e.g. LATENT_CNF_MAX_FILES for max_files."""
    if setting not in Settings.model_fields:
        raise KeyError(f"no setting {setting!r}")
    return f"{Settings.model_config['env_prefix']}{setting.upper()}"


class Refusal(Exception):
    """A request the service does not serve; `code` names the kind in error bodies, stable for clients. A refusal
    for passing a configured limit names its `setting`: the message names the variable that moves the limit."""

    code: ClassVar[str]
    setting: ClassVar[str | None] = None

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        if cls.setting is not None:
            variable(cls.setting)  # a renamed setting fails here, at import, not in an error message

    def __str__(self) -> str:
        message = super().__str__()
        if self.setting is None or variable(self.setting) in message:
            return message
        return f"{message} (the server's {variable(self.setting)})"


class MalformedRequest(Refusal):
    """Not what the protocol asks for (tensor shapes, kinds, names): the request cannot be read."""

    code = "invalid_request"


class InvalidRequest(Refusal):
    """Readable, but a value is outside the service's limits."""

    code = "invalid_request"


class UnknownModel(Refusal):
    code = "unknown_model"


class NoLatentMap(Refusal):
    """The model's folder holds no latent_map.json."""

    code = "no_latent_map"


class ModelUnavailable(Refusal):
    """The model failed to load, or is loading or unloading."""

    code = "model_unavailable"


class LoadFailed(Refusal):
    """A repository load of a model folder that does not load (the folder is at fault, not the service)."""

    code = "load_failed"


class Unauthorized(Refusal):
    """A repository control call without the configured bearer token."""

    code = "unauthorized"


class NotReady(Refusal):
    """Models are still loading: worth retrying soon."""

    code = "not_ready"


class InvalidSolver(Refusal):
    code = "invalid_solver"


class LabelNotSupported(Refusal):
    code = "label_not_supported"


class LabelRequired(Refusal):
    code = "label_required"


class TooManyFiles(Refusal):
    code = "too_many_files"
    setting = "max_files"


class RequestTooCostly(Refusal):
    """Over the per-request work budget (service/cost.py)."""

    code = "request_too_costly"
    setting = "max_request_cost"


class SolverFailed(Refusal):
    """The ODE solve failed for this request's inputs (too stiff, over max_nfe, non-finite)."""

    code = "solver_failed"


class ClientClosed(Refusal):
    """The client went away before the answer; nobody reads the error, the log does."""

    code = "client_closed_request"


class QueueFull(Refusal):
    """The bounded queue is full: worth retrying soon."""

    code = "queue_full"


class ShuttingDown(Refusal):
    code = "shutting_down"


class QueueTimeout(Refusal):
    """The request waited longer than its timeout."""

    code = "timeout"


class EmptyFile(Refusal):
    code = "empty_file"


class UnsupportedImage(Refusal):
    """Not an image in an accepted format."""

    code = "unsupported_image"


class CorruptImage(Refusal):
    code = "corrupt_image"


class ImageTooLarge(Refusal):
    """One image declares more pixels than a decode may hold."""

    code = "image_too_large"
    setting = "max_image_pixels"


class RequestTooLarge(Refusal):
    """A request's images declare more pixels in all than its decoding may hold."""

    code = "request_too_large"
    setting = "max_request_pixels"

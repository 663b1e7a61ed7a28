"""Why the service does not answer a request, in its own terms: raised by the hub, the batcher, the upload decoding
and the operations, which know nothing of HTTP; service/errors.py maps each kind to its status and error body."""

from __future__ import annotations

from typing import ClassVar


class Refusal(Exception):
    """A request the service does not serve; `code` names the kind in error bodies, stable for clients."""

    code: ClassVar[str]


class MalformedRequest(Refusal):
    """Not what the protocol asks for (tensor shapes, kinds, names): the request cannot be read."""

    code = "invalid_request"


class InvalidRequest(Refusal):
    """Readable, but a value is outside the service's limits."""

    code = "invalid_request"


class UnknownModel(Refusal):
    code = "unknown_model"


class ModelUnavailable(Refusal):
    """The checkpoint was tried and failed to load."""

    code = "model_unavailable"


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


class RequestTooCostly(Refusal):
    """Over the per-request work budget (service/cost.py)."""

    code = "request_too_costly"


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


class RequestTooLarge(Refusal):
    """A request's images declare more pixels in all than its decoding may hold."""

    code = "request_too_large"

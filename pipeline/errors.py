"""Errors a user can cause, each with the exit code the CLI returns for it.

Exit codes (documented in README): 0 ok, 1 regression found by `compare`, 2 bad config or data,
3 model or resource problem (out of memory included), 4 internal error (anything unexpected), 130/143 interrupted.
"""


class UserError(Exception):
    """A problem the user can fix; the CLI prints the message on one line and exits with `exit_code`."""

    exit_code = 2


class ConfigError(UserError):
    exit_code = 2


class DataError(UserError):
    exit_code = 2


class ResourceError(UserError):
    """Missing model, unreachable Hub, unusable checkpoint, disk full: resource problems."""

    exit_code = 3


def is_offline_error(exc: BaseException) -> bool:
    """True when a Hub call failed because there is no network (or HF_HUB_OFFLINE=1), not because of a bad id."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("offline", "connection", "couldn't reach", "name or service",
                                         "network", "max retries", "timed out", "localentrynotfound"))


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGTERM/SIGINT: stop where the job is (what was written stays); exit 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(f"stopped at once by a second signal {signum}")
        self.exit_code = 128 + signum


class Interrupted(UserError):
    """SIGINT/SIGTERM: the stage stopped at a safe point; exit 128 + signal number (130, 143)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


def is_out_of_memory(exc: BaseException) -> bool:
    """An out-of-memory error of torch's allocators (CUDA, CPU, MPS, XPU), as accelerate recognizes them."""
    from accelerate.utils.memory import should_reduce_batch_size

    return type(exc).__name__ == "OutOfMemoryError" or should_reduce_batch_size(exc)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

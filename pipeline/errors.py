"""Errors a user can cause, each with the exit code the CLI returns for it.

Exit codes (documented in README, and in every Kubernetes manifest's podFailurePolicy):
0 ok; 1 regression found by `compare` (or an export whose merged model is not equal enough); 2 bad config or data
(a retry fails the same way); 3 this machine cannot run it as configured (out of memory, disk full); 4 internal
error (anything unexpected); 5 a network or Hub failure that may pass (retry with backoff); 130/143 stopped by
SIGINT/SIGTERM.
"""


class UserError(Exception):
    """A problem the user can fix; the CLI prints the message on one line and exits with `exit_code`."""

    exit_code = 2


class ConfigError(UserError):
    exit_code = 2


class DataError(UserError):
    exit_code = 2


class ResourceError(UserError):
    """This machine cannot run the job as configured: out of memory, disk full, an unwritable cache."""

    exit_code = 3


class TransientError(UserError):
    """The Hub or the network failed in a way that may pass: retrying later can succeed."""

    exit_code = 5


def is_offline_error(exc: BaseException) -> bool:
    """True when a Hub call failed because there is no network (or HF_HUB_OFFLINE=1), not because of a bad id."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("offline", "connection", "couldn't reach", "name or service",
                                         "network", "max retries", "timed out", "timeout", "localentrynotfound",
                                         "temporarily unavailable", "502", "503", "504"))


def hub_error(exc: BaseException, what: str, local_hint: str) -> UserError:
    """A failed Hub call as the error a user can act on: offline by choice (HF_HUB_OFFLINE=1) and missing from
    the local cache is a config error (2); an unreachable or overloaded Hub may pass (5); anything else (no such
    repository or revision, no access) is a config error (2)."""
    import os

    if is_offline_error(exc):
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            return ConfigError(f"{what}: HF_HUB_OFFLINE is set and it is not in the local Hub cache; {local_hint}")
        return TransientError(f"{what}: the Hugging Face Hub is unreachable (a retry may succeed); {local_hint}")
    return ConfigError(f"{what}: {first_line(exc)}")


class Stopped(BaseException):
    """SIGTERM/SIGINT outside a stage's safe points, or a second signal inside one: stop where the job is. A
    BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it; atomic writes remove their
    temporary files on the way out, so nothing is left half-written. Exit 128 + the signal's number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
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

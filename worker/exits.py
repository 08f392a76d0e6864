"""Exit codes of every ``slotwatch`` command, and one-line messages for the failures a user
can fix (bad settings, an unreachable broker) instead of tracebacks.

The README's "Exit codes" table lists the same codes.

>>> EXIT_CONFIG, EXIT_BROKER
(2, 5)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1  # a bug: the traceback is printed
EXIT_CONFIG = 2  # bad settings, options, input data or artifact
EXIT_CHECKPOINT = 3  # a checkpoint that does not fit (run)
EXIT_GRACE = 4  # shutdown overran SLOTWATCH_SHUTDOWN_GRACE_S (run)
EXIT_BROKER = 5  # the Kafka brokers cannot be reached (or answer with an error)
EXIT_CHECK_FAILED = 6  # train --strict: a quality check failed, `latest` not moved
EXIT_FENCED = 7  # run, exactly-once: another worker took over this worker's transactional.id
EXIT_INTERRUPTED = 130  # Ctrl-C

#: (code, meaning) for the README and ``slotwatch --help``
CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "done (run: a clean stop after SIGTERM/SIGINT)"),
    (EXIT_UNEXPECTED, "an unexpected error (a bug: the traceback is printed)"),
    (EXIT_CONFIG, "bad settings, options, input data or model artifact (the message says which)"),
    (EXIT_CHECKPOINT, "run: a checkpoint that does not fit the model or the settings"),
    (EXIT_GRACE, "run: shutdown overran SLOTWATCH_SHUTDOWN_GRACE_S"),
    (EXIT_BROKER, "the Kafka brokers cannot be reached (run --create-topics, simulate --to-kafka, train --from-kafka)"),
    (EXIT_CHECK_FAILED, "train --strict: the validation false-alarm rate is above --false-alarm-rate; `latest` not moved"),
    (EXIT_FENCED, "run, exactly-once: fenced, another worker uses the same transactional.id (SLOTWATCH_KAFKA__WORKER_ID)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C) outside the worker"),
)


def env_name(loc: tuple) -> str:
    """The environment variable of a pydantic error location.

    >>> env_name(("model", "features"))
    'SLOTWATCH_MODEL__FEATURES'
    >>> env_name(("model", "features", 0))
    'SLOTWATCH_MODEL__FEATURES'
    """
    parts = [str(p) for p in loc if isinstance(p, str)]
    return "SLOTWATCH_" + "__".join(p.upper() for p in parts)


def describe_settings_error(e) -> str:
    """One line for a pydantic ``ValidationError`` of the settings: each variable and what is wrong
    (values are not repeated: they may be secrets).

    >>> from worker.settings import Settings
    >>> try:
    ...     Settings(model={"slots": 0})
    ... except Exception as e:
    ...     print(describe_settings_error(e))
    bad settings: SLOTWATCH_MODEL__SLOTS: Input should be greater than 0
    """
    try:
        errors = e.errors(include_url=False, include_input=False)
    except Exception:  # noqa: BLE001 - not a pydantic error
        return f"bad settings: {e}"
    parts = []
    for err in errors:
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        loc = tuple(err.get("loc", ()))
        parts.append(f"{env_name(loc)}: {msg}" if loc else msg)
    return "bad settings: " + "; ".join(parts)


def is_broker_error(e: BaseException) -> bool:
    """Whether ``e`` means the brokers cannot be reached or refused a request (kafka-python's errors)."""
    try:
        from kafka.errors import KafkaError
    except ImportError:  # pragma: no cover - kafka-python is a dependency
        return False
    return isinstance(e, KafkaError)


def describe_broker_error(e: BaseException, bootstrap: str | None = None, doing: str = "") -> str:
    """One line: what failed, where, and what to check.

    >>> from kafka.errors import KafkaTimeoutError
    >>> describe_broker_error(KafkaTimeoutError("Unable to bootstrap"), "localhost:9092", "create the topics")
    'cannot create the topics: the Kafka brokers at localhost:9092 are unreachable or refused (KafkaTimeoutError: Unable to bootstrap). Is the broker running? SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS sets the address.'
    """
    what = f"cannot {doing}" if doing else "Kafka error"
    where = f" at {bootstrap}" if bootstrap else ""
    detail = type(e).__name__
    text = str(e).strip()
    text = text.removeprefix(detail + ": ").removeprefix(detail + ": ")
    if text and text != detail and len(text) < 200:
        detail += f": {text}"
    return (f"{what}: the Kafka brokers{where} are unreachable or refused ({detail}). Is the broker running? "
            "SLOTWATCH_KAFKA__BOOTSTRAP_SERVERS sets the address.")


def model_error(e: BaseException, option: str | None = "--model") -> str:
    """An artifact error as the user should read it: when the model came from a command-line
    option, the hint names that option rather than ``SLOTWATCH_MODEL__PATH``.

    >>> model_error(ValueError("no model at m2: train one with `slotwatch train` or set SLOTWATCH_MODEL__PATH"))
    'no model at m2 (from --model): train one with `slotwatch train` or give --model a models folder or an artifact directory'
    >>> model_error(ValueError("no model at m2: train one with `slotwatch train` or set SLOTWATCH_MODEL__PATH"), None)
    'no model at m2: train one with `slotwatch train` or set SLOTWATCH_MODEL__PATH'
    """
    msg = str(e)
    if not option:
        return msg
    msg = msg.replace("or set SLOTWATCH_MODEL__PATH", f"or give {option} a models folder or an artifact directory")
    msg = msg.replace("point SLOTWATCH_MODEL__PATH at", f"point {option} at")
    if msg.startswith("no model at ") and ":" in msg:
        head, tail = msg.split(":", 1)
        msg = f"{head} (from {option}):{tail}"
    return msg

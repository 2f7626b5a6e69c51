"""Compiling a workflow's Celery canvas into what hitl sends and stores.

A workflow is a chain whose items are Celery tasks (plain ``@app.task``/``@shared_task`` tasks or ``@hitl.step``
steps), groups, chords and waits (``hitl.wait_for_approval`` signatures; a group of waits is a parallel wait).
:func:`compile_canvas` splits the chain at its waits, when the run starts:

- What comes before a wait is sent as one Celery canvas and runs on Celery's own machinery: Celery sends each
  next link, runs groups and joins chords (through the result backend). hitl does no database work for a plain
  task.
- A wait is carried by the task before it: that task's signature gets the :data:`HEADER_WAIT` header (the
  waits' specs and the compiled continuation), and when it succeeds, the worker that ran it stores the
  approval(s) and the run ends its chain there: the wait costs no broker hop (:mod:`hitl.worker.signals` for a plain
  task, :mod:`hitl.delivery.steplog` for a step). After a group, or with nothing before it, the wait is a task of its
  own
  (``hitl.wait_for_approval``: a chord's body, say).
- The task that ends the run gets :data:`HEADER_LAST`: when it succeeds the run succeeds with its result. A
  trailing group gets ``hitl.finish_run`` as its chord body, so the run ends when the whole group has.

Every task signature carries :data:`HEADER_RUN` (the run id: Celery passes message headers to the worker, where
they are ``task.request.hitl_run``) and a deterministic task id (a uuid5 of the run and its place), so a second
delivery of a journaled step is recognised; every message of a run has the run id as its Celery ``root_id``, which
is how Flower shows which run a task belongs to. Group members that feed a chord keep their results
(``ignore_result=False``), which Celery's chord join needs.

A shape hitl cannot run — a wait inside a group of other tasks or inside a chord's header, ``on_reject`` on a
parallel wait, a task that cannot take the arguments it would get — raises :class:`~approvals.errors.WorkflowError`
before anything is stored.
"""

from __future__ import annotations

import inspect
import itertools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Signature, group, signature
from celery.canvas import _chain, _chord, maybe_signature

from approvals.errors import WorkflowError
from hitl.delivery.waitspec import wait_spec
from hitl.infra.celery_app import app

#: Message header with the run id, on every task of a run.
HEADER_RUN = "hitl_run"
#: Message header of the task before a wait: ``{"waits": [spec, ...], "join": {...} | None, "continuation": ...}``.
HEADER_WAIT = "hitl_wait"
#: Message header of the task that ends the run when it succeeds.
HEADER_LAST = "hitl_last"
#: Message header naming the outbox row whose message this task's message is (marked delivered when it runs).
HEADER_RECEIPT = "hitl_receipt"
WAIT_TASK = "hitl.wait_for_approval"
FINISH_TASK = "hitl.finish_run"
#: How long a message hitl sends from its outbox is retried when the broker is unreachable (Celery's default
#: policy, about 1 s): an unsent row is the relay's to send, so the caller — ``hitl approve``, an HTTP request —
#: is not held for the minute a worker waits (``task_publish_retry_policy`` in celeryconfig.py).
OUTBOX_RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 1}
_TASK_ID_NAMESPACE = uuid.UUID("6f1c3a52-58e4-4c55-9a57-0f0e6c3f4d10")

Sig = dict[str, Any]


def child_task_id(parent: str, index: int) -> str:
    """The task id of the ``index``-th signature compiled on behalf of ``parent`` (a uuid5: same inputs, same id).

    Deterministic ids are what let a journaled step tell a second delivery of itself from a new step (see
    :mod:`hitl.delivery.steplog`): a re-sent chain carries the same ids as the first one.
    """
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, f"{parent}/{index}"))


@dataclass
class _Wait:
    """One wait, or a parallel wait (a group of waits), as found in the chain."""

    sigs: list[Signature]
    any_rejection_rejects: bool = True
    parallel: bool = False


@dataclass
class _Compiler:
    run_id: str
    base: str
    counter: itertools.count[int] = field(default_factory=itertools.count)
    #: False for what is stored to be sent later (a continuation, a wait's branch): its task ids and run header
    #: are given when it is sent (:func:`bind_stored`), which keeps the stored rows small.
    bound: bool = True

    def next_id(self) -> str:
        return child_task_id(self.base, next(self.counter))

    def stored(self) -> _Compiler:
        return _Compiler(self.run_id, self.base, self.counter, bound=False)


def parallel(*waits: Signature, any_rejection_rejects: bool = True) -> Signature:
    """A parallel wait: ``waits`` (``wait_for_approval`` signatures) are asked at once, and the run goes on once,
    when all are settled, with the list of their decisions (in this order).

    ``group(wait_a, wait_b)`` is the same with the default rule: the first rejection settles the parallel wait as
    rejected (the other approvals are cancelled and their places in the list are None). With
    ``any_rejection_rejects=False`` every approval is decided (or times out) first.
    """
    marked = []
    for wait in waits:  # on each member: Celery makes ``group | task`` a chord, whose header drops group options
        wait = wait.clone()
        wait.options["hitl_any_rejection_rejects"] = any_rejection_rejects
        marked.append(wait)
    return group(marked)


def compile_canvas(
    canvas: Signature | Sig, run_id: str, base: str | None = None, *, tail: tuple[str, Any] = ("end", None)
) -> Sig | None:
    """Compile a workflow canvas for run ``run_id`` (see the module docstring); None when it holds nothing.

    Args:
        canvas: the workflow builder's canvas: a task signature, chain, group or chord.
        run_id: the run it belongs to.
        base: what the deterministic task ids derive from (default: the run id; a replaced step uses its id).
        tail: what follows the canvas: ``("end", None)`` (the run ends), ``("wait", header)`` (the canvas is
            followed by a wait), or ``("chain", [sig, ...])`` (compiled signatures that follow, as Celery's chain).

    Returns:
        The canvas to send, as a signature dict (a chain, or a single task).

    Raises:
        WorkflowError: a shape hitl cannot run, or a task that cannot take its arguments.
        InvalidPayload: a wait's options are invalid (see :func:`hitl.delivery.waitspec.wait_spec`).
    """
    c = _Compiler(run_id, base or run_id)
    return _compile(c, _items(_sig(canvas)), tail, first_of_run=base is None)


def describe(canvas: Signature | Sig) -> str:
    """A one-line picture of a workflow canvas, in run order, as ``hitl workflows`` shows it: tasks by name,
    ``wait(key)``, ``parallel(wait(a), wait(b))``, ``group(a, b)``, linked by ``→``.

    Raises:
        WorkflowError: a shape hitl cannot run (as :func:`compile_canvas` refuses it).
    """

    def one(item: Signature | _Wait) -> str:
        if isinstance(item, _Wait):
            waits = [f"wait({w.get('kwargs', {}).get('key', '?')})" for w in item.sigs]
            return f"parallel({', '.join(waits)})" if item.parallel else waits[0]
        if isinstance(item, group):
            return f"group({', '.join(' → '.join(one(i) for i in _items(_sig(t))) for t in item.tasks)})"
        return str(item.get("task"))

    return " → ".join(one(item) for item in _items(_sig(canvas)))


def _sig(value: Any) -> Signature:
    """``value`` as a Signature, without the deep copy ``celery.signature`` makes of one (compiling only reads it)."""
    return maybe_signature(value, app=app)


def _items(sig: Signature) -> list[Signature | _Wait]:
    """The top-level items of a canvas in run order: task signatures, groups and waits (chains flattened; a
    chord becomes its header group followed by its body, which is what Celery makes of ``group | body``)."""
    if isinstance(sig, _chain):
        return [item for task in sig.tasks for item in _items(_sig(task))]
    if isinstance(sig, _chord):
        header = sig.tasks if isinstance(sig.tasks, group) else group(list(sig.tasks))
        return [*_items(header), *_items(_sig(sig.body))]
    if isinstance(sig, group):
        members = [_sig(t) for t in sig.tasks]
        if members and all(_is_wait(m) for m in members):
            flag = all(m.options.get("hitl_any_rejection_rejects", True) for m in members)
            return [_Wait(members, any_rejection_rejects=flag, parallel=True)]
        for m in members:
            _refuse_waits_in(m, "a group")
        return [sig]
    if _is_wait(sig):
        return [_Wait([sig])]
    if sig.get("subtask_type"):
        raise WorkflowError(f"hitl cannot run a {sig.get('subtask_type')} canvas in a workflow")
    return [sig]


def _is_wait(sig: Signature) -> bool:
    return not sig.get("subtask_type") and sig.get("task") == WAIT_TASK


def _refuse_waits_in(sig: Signature, where: str) -> None:
    if _is_wait(sig):
        raise WorkflowError(
            f"a wait cannot stand inside {where} of other tasks: put it after the group (its results are the "
            "subject), or make the group all waits (a parallel wait)"
        )
    for inner in _nested(sig):
        _refuse_waits_in(inner, where)


def _nested(sig: Signature) -> list[Signature]:
    if isinstance(sig, _chord):
        return [_sig(t) for t in sig.tasks] + [_sig(sig.body)]
    if isinstance(sig, _chain | group):
        return [_sig(t) for t in sig.tasks]
    return []


def _compile(c: _Compiler, items: list[Signature | _Wait], tail: tuple[str, Any], *, first_of_run: bool) -> Sig | None:
    """Compile ``items`` followed by ``tail``: split at the first wait, compile what follows it first."""
    for i, item in enumerate(items):
        if isinstance(item, _Wait):
            before, after = items[:i], items[i + 1 :]
            header = _wait_header(c, item, _compile(c.stored(), after, tail, first_of_run=False))
            return _segment(c, before, ("wait", header), first_of_run)
    return _segment(c, items, tail, first_of_run)


def _wait_header(c: _Compiler, wait: _Wait, continuation: Sig | None) -> dict[str, Any]:
    specs = []
    for sig in wait.sigs:
        kwargs = dict(sig.kwargs or {})
        branches = {name: kwargs.pop(name, None) for name in ("on_reject", "on_timeout")}
        if wait.parallel and any(v is not None for v in branches.values()):
            raise WorkflowError("a wait in a parallel wait cannot declare on_reject or on_timeout: branch after it")
        spec = wait_spec(kwargs)
        for name, value in branches.items():
            spec[name] = _compile(c.stored(), _items(_sig(value)), ("end", None), first_of_run=False) if value else None
        specs.append(spec)
    join = {"any_rejection_rejects": wait.any_rejection_rejects} if wait.parallel else None
    return {"waits": specs, "join": join, "continuation": continuation}


def _segment(c: _Compiler, items: list[Signature | _Wait], tail: tuple[str, Any], first_of_run: bool) -> Sig | None:
    """Bind ``items`` (no waits among them) to the run and attach ``tail`` to the last of them."""
    kind, value = tail
    sigs = [_bind(c, item, prepended=not (first_of_run and i == 0), in_group=False) for i, item in enumerate(items)]
    last = sigs[-1] if sigs else None
    is_group = last is not None and last.get("subtask_type") == "group"
    if kind == "chain":
        sigs += list(value)
    elif kind == "wait" and last is not None and not is_group:
        sigs[-1] = _with_headers(last, {HEADER_WAIT: value})
    elif kind == "wait":
        sigs.append(_own_task(c, WAIT_TASK, {"hitl_wait": value}, prepended=last is not None or not first_of_run))
    elif last is not None and not is_group:
        sigs[-1] = _with_headers(last, {HEADER_LAST: True})
    elif last is not None:
        sigs.append(_with_headers(_own_task(c, FINISH_TASK, {}, prepended=True), {HEADER_LAST: True}))
    if not sigs:
        return None
    _keep_group_results(sigs)
    if len(sigs) == 1:
        return sigs[0]
    return {
        "task": "celery.chain",
        "args": [],
        "kwargs": {"tasks": sigs},
        "options": {},
        "subtask_type": "chain",
        "immutable": False,
    }


def _own_task(c: _Compiler, name: str, kwargs: dict[str, Any], *, prepended: bool) -> Sig:
    sig: Sig = {
        "task": name,
        "args": [],
        "kwargs": kwargs,
        "options": {},
        "subtask_type": None,
        "immutable": not prepended,
    }
    return _bind_leaf(c, sig, prepended=prepended)


def _bind(c: _Compiler, item: Signature | _Wait, *, prepended: bool, in_group: bool) -> Sig:
    assert not isinstance(item, _Wait)
    kind = item.get("subtask_type")
    if kind == "group":
        members = [_bind(c, _sig(t), prepended=prepended, in_group=True) for t in item.tasks]
        return {**dict(item), "kwargs": {**item.kwargs, "tasks": members}, "options": _plain_options(item)}
    if kind == "chain":
        tasks = [_sig(t) for t in item.tasks]
        bound = [_bind(c, t, prepended=prepended if i == 0 else True, in_group=in_group) for i, t in enumerate(tasks)]
        return {**dict(item), "kwargs": {**item.kwargs, "tasks": bound}, "options": _plain_options(item)}
    if kind == "chord":  # nested inside a group: Celery runs it; hitl only binds its tasks
        header = [_bind(c, _sig(t), prepended=prepended, in_group=True) for t in item.tasks]
        body = _bind(c, _sig(item.body), prepended=True, in_group=in_group)
        return {
            **dict(item),
            "kwargs": {**item.kwargs, "header": header, "body": body},
            "options": _plain_options(item),
        }
    if kind:
        raise WorkflowError(f"hitl cannot run a {kind} canvas in a workflow")
    return _bind_leaf(c, dict(item), prepended=prepended)


def _plain_options(sig: Signature) -> dict[str, Any]:
    return {k: v for k, v in (sig.options or {}).items() if not k.startswith("hitl_")}


def _bind_leaf(c: _Compiler, sig: Sig, *, prepended: bool) -> Sig:
    _check_call(sig, prepended=prepended and not sig.get("immutable"))
    _check_json(sig)
    options = dict(sig.get("options") or {})
    headers = dict(options.get("headers") or {})
    if c.bound:
        options.setdefault("task_id", c.next_id())
        headers[HEADER_RUN] = c.run_id
    if headers:
        options["headers"] = headers
    kwargs = dict(sig.get("kwargs") or {})
    if _declares_run_id(sig["task"]):  # a plain task that declares run_id receives it, in its kwargs
        kwargs["run_id"] = c.run_id
    return {**sig, "args": list(sig.get("args") or ()), "kwargs": kwargs, "options": options}


_SIGNATURES: dict[tuple[str, int], inspect.Signature | None] = {}


def _signature_of(name: str) -> tuple[Any, inspect.Signature | None]:
    """The registered task ``name`` (None when this process does not know it) and its function's signature,
    looked up once per task (``inspect.signature`` costs more than the rest of compiling a signature)."""
    task = app.tasks.get(name)
    if task is None:
        return None, None
    key = (name, id(task.run))
    if key not in _SIGNATURES:
        try:
            _SIGNATURES[key] = inspect.signature(task.run)
        except (TypeError, ValueError):
            _SIGNATURES[key] = None
    return task, _SIGNATURES[key]


def _declares_run_id(name: str) -> bool:
    task, params = _signature_of(name)
    if task is None or params is None or getattr(task, "journaled", False):  # a step gets it from the header
        return False
    return "run_id" in params.parameters


def _with_headers(sig: Sig, headers: dict[str, Any]) -> Sig:
    options = dict(sig.get("options") or {})
    options["headers"] = {**(options.get("headers") or {}), **headers}
    return {**sig, "options": options}


def _keep_group_results(sigs: list[Sig]) -> None:
    """Every task inside a group followed by something stores its result: Celery's chord join reads them."""
    for i, sig in enumerate(sigs[:-1]):
        if sig.get("subtask_type") == "group":
            sigs[i] = _storing(sig)


def _storing(sig: Sig) -> Sig:
    kind = sig.get("subtask_type")
    if kind in ("group", "chain"):
        return {**sig, "kwargs": {**sig["kwargs"], "tasks": [_storing(t) for t in sig["kwargs"]["tasks"]]}}
    if kind == "chord":
        return {**sig, "kwargs": {**sig["kwargs"], "body": _storing(sig["kwargs"]["body"])}}
    return {**sig, "options": {**sig["options"], "ignore_result": False}}


def _check_call(sig: Sig, *, prepended: bool) -> None:
    """Refuse a registered task that cannot take the arguments it would be called with (``prepended``: the
    result of what comes before it, or the decision, goes first). Tasks this process does not know (another
    app's, registered only on the workers) are not checked."""
    task, params = _signature_of(sig["task"])
    if task is None or params is None:
        return
    kwargs = dict(sig.get("kwargs") or {})
    for injected in ("run_id", "session"):  # what a step may receive from hitl
        if injected in params.parameters:
            kwargs.setdefault(injected, None)
    args = [None] * prepended + list(sig.get("args") or ())
    try:
        params.bind(*args, **kwargs)
    except TypeError as exc:
        got = "the previous result, then " if prepended else ""
        raise WorkflowError(
            f"task {sig['task']} cannot be called with {got}args {list(sig.get('args') or ())} and kwargs "
            f"{sorted(sig.get('kwargs') or {})}: {exc}"
        ) from None


def as_chain(sigs: list[Sig]) -> Signature:
    """The signature to send for a stored list of signature dicts: the one, or a chain of them (the form of
    continuations stored before canvases were compiled)."""
    if len(sigs) == 1:
        return signature(sigs[0], app=app)
    return _chain(*[signature(s, app=app) for s in sigs], app=app)


def apply_canvas(sigs: list[Sig], args: list[Any], task_id: str, run_id: str | None) -> None:
    """Send a stored canvas with ``args`` prepended to its first task(s).

    ``task_id`` is the outbox row's id: every first task gets it as :data:`HEADER_RECEIPT`, so the worker marks
    the row delivered when it has run. The run id is the messages' Celery ``root_id``.

    Raises:
        kombu's OperationalError: the broker is unreachable (the outbox handles it).
    """
    if run_id is not None:
        sigs = bind_stored(sigs, run_id, task_id)
    first = _first_tasks(sigs[0], task_id, list(args)) if sigs else None
    stored = ([first] if first else []) + sigs[1:]
    options: dict[str, Any] = {"root_id": run_id} if run_id is not None else {}
    linear = _linear(stored)
    if linear is not None:  # the common case, sent as Celery's chain sends it, without re-preparing each link
        head, *rest = linear
        signature(head, app=app).apply_async(
            chain=[dict(t) for t in reversed(rest)] or None,
            retry_policy=OUTBOX_RETRY_POLICY,
            argsrepr=short_repr(head.get("args") or [], app.amqp.argsrepr_maxsize),
            kwargsrepr=short_repr(head.get("kwargs") or {}, app.amqp.kwargsrepr_maxsize),
            **options,
        )
        return
    as_chain(stored).apply_async(retry_policy=OUTBOX_RETRY_POLICY, **options)


def short_repr(value: Any, limit: int) -> str:
    """``repr(value)`` cut to ``limit`` characters, ending ``...`` when cut: the ``argsrepr``/``kwargsrepr`` of a
    message hitl sends (Celery's ``argsrepr_maxsize``/``kwargsrepr_maxsize``, 1,024 each), which Flower and the
    worker's log show.

    Celery computes them with its ``saferepr``, which walks the value in Python to stay safe on any object
    (``celery.app.amqp.AMQP.as_task_v2``): about 100 µs for a decision, against 2 µs for the built-in ``repr``
    in C. What hitl sends is JSON data (checked when the canvas is compiled, or read back from a stored row),
    whose ``repr`` is plain.
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _linear(sigs: list[Sig]) -> list[Sig] | None:
    """The tasks of ``sigs`` in run order when they form a plain chain (no group or chord, every task with its
    id), else None.

    Such a chain is sent the way ``celery.canvas._chain.run`` sends one: the first task's message carries the
    rest as its ``chain`` (last first), and each worker pops the next link and sends it with its result, its
    own id as ``parent_id`` and the same ``root_id`` (``celery.app.trace``). Preparing the links
    (``prepare_steps``: clone and freeze each one) is skipped, since compiled tasks have their ids already.
    """
    tasks: list[Sig] = []
    for sig in sigs:
        kind = sig.get("subtask_type")
        if kind == "chain":
            inner = _linear(list(sig["kwargs"]["tasks"]))
            if inner is None or sig.get("args") or sig.get("options"):
                return None
            tasks += inner
        elif kind or not (sig.get("options") or {}).get("task_id"):
            return None
        else:
            tasks.append(sig)
    return tasks or None


def bind_stored(sigs: list[Sig], run_id: str, base: str) -> list[Sig]:
    """Give every task of stored canvases that has no task id yet its run header and a deterministic id derived
    from ``base`` (the outbox row's task id: the same on every re-send, so a journaled step recognises a second
    delivery). Continuations inside wait headers stay as they are until they are sent in turn."""
    counter = itertools.count()

    def bind(leaf: Sig) -> Sig:
        options = dict(leaf.get("options") or {})
        if "task_id" in options:
            return leaf
        options["task_id"] = child_task_id(base, next(counter))
        options["headers"] = {**(options.get("headers") or {}), HEADER_RUN: run_id}
        return {**leaf, "options": options}

    return [map_leaves(s, bind) for s in sigs]


def _first_tasks(sig: Sig, task_id: str, args: list[Any]) -> Sig:
    """``sig`` with ``args`` prepended to the task(s) that run first and :data:`HEADER_RECEIPT` on them.

    hitl prepends the arguments itself: Celery does not pass a chain's arguments on to a group that starts it
    once the group has become a chord's header (``chain(group, task).apply_async(args)`` drops them).
    """
    kind = sig.get("subtask_type")
    if kind == "chain":
        tasks = sig["kwargs"]["tasks"]
        return {**sig, "kwargs": {**sig["kwargs"], "tasks": [_first_tasks(tasks[0], task_id, args), *tasks[1:]]}}
    if kind == "group":
        members = [_first_tasks(t, task_id, args) for t in sig["kwargs"]["tasks"]]
        return {**sig, "kwargs": {**sig["kwargs"], "tasks": members}}
    if kind == "chord":
        header = [_first_tasks(t, task_id, args) for t in sig["kwargs"]["header"]]
        return {**sig, "kwargs": {**sig["kwargs"], "header": header}}
    if kind:
        return sig
    options = dict(sig.get("options") or {})
    options["headers"] = {**(options.get("headers") or {}), HEADER_RECEIPT: task_id}
    own = list(sig.get("args") or ())
    return {**sig, "args": own if sig.get("immutable") else [*args, *own], "options": options}


def _check_json(sig: Sig) -> None:
    """Refuse a task whose arguments JSON cannot carry (the broker's serializer, and hitl's stored rows)."""
    try:
        json.dumps([sig.get("args") or [], sig.get("kwargs") or {}], allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise WorkflowError(f"the arguments of task {sig['task']} are not JSON: {exc}") from None


def map_leaves(sig: Sig, fn: Callable[[Sig], Sig]) -> Sig:
    """Return the compiled canvas ``sig`` with ``fn(task signature dict) -> dict`` applied to every task in it
    (the continuations in wait headers included)."""
    kind = sig.get("subtask_type")
    if kind in ("chain", "group"):
        return {**sig, "kwargs": {**sig["kwargs"], "tasks": [map_leaves(t, fn) for t in sig["kwargs"]["tasks"]]}}
    if kind == "chord":
        header = [map_leaves(t, fn) for t in sig["kwargs"]["header"]]
        return {**sig, "kwargs": {**sig["kwargs"], "header": header, "body": map_leaves(sig["kwargs"]["body"], fn)}}
    if kind:
        return sig
    return fn(sig)

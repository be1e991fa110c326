"""``GuardingProxy``: an MCP server that guards every tool call of an upstream MCP server.

Each client session of the proxy (one stdio connection, or one streamable HTTP session) opens
its own session with the upstream server (a subprocess over stdio, or a streamable HTTP URL) and
is one toolguard task: started when the client sends ``initialize``, ended — credentials
revoked, ``task_end`` recorded — when the client closes the session, the upstream goes away,
or the proxy is stopped. Both sides speak MCP through the official SDK: the client side is a
low-level :class:`mcp.server.lowlevel.Server`, the upstream side an :class:`mcp.ClientSession`.

* ``tools/list`` returns the upstream's tools that the intent names, unchanged (schemas and
  all); the others are not offered.
* ``tools/call`` goes through ``guard.authorize`` (decision, budget, ``request`` row, the
  call's credential) with the MCP request id as the correlation id; the credential travels
  with that one call to the upstream — ``_meta["io.toolguard/credential"]`` over stdio,
  ``Authorization: Bearer`` over HTTP — and the call's ``outcome`` row is queued when the
  result (or error, or cancellation) comes back. The token is scrubbed from the result. A
  denial is a ``CallToolResult`` with ``isError`` and the reason; an :class:`AuditError` is a
  JSON-RPC error and nothing is forwarded.
* Everything else the client asks (resources, prompts, completions, logging level, ping) is
  forwarded as it is; the upstream's notifications (progress, log messages, list changes)
  are forwarded to the client; a client's cancellation of a forwarded call is forwarded to
  the upstream and recorded as the call's outcome.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.session import MessageHandlerFnT
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.shared.exceptions import McpError
from mcp.shared.message import ClientMessageMetadata, SessionMessage
from mcp.shared.session import RequestResponder

from toolguard import AuditError, Guard, PolicyDenied, TaskSession, ToolGuardError
from toolguard.adapters import DENIED
from toolguard.context import task_var
from toolguard.httpauth import tls_context
from toolguard.scrub import scrub

__all__ = ["CREDENTIAL_META_KEY", "GuardingProxy", "Upstream", "UpstreamToolError"]

log = logging.getLogger("toolguard_mcp")

CREDENTIAL_META_KEY = "io.toolguard/credential"
"""Where a stdio upstream finds the call's credential: ``params._meta`` of ``tools/call``."""

_CANCELLED = "notifications/cancelled"

ServerResult = types.ServerResult
ReadStream = MemoryObjectReceiveStream[SessionMessage | Exception]
WriteStream = MemoryObjectSendStream[SessionMessage]


class UpstreamToolError(Exception):
    """Recorded as the outcome of a call whose upstream result has ``isError`` set."""


@dataclass(frozen=True)
class Upstream:
    """The upstream MCP server: a command run over stdio, or a streamable HTTP URL."""

    command: tuple[str, ...] = ()
    url: str | None = None
    env: Mapping[str, str] | None = None
    cwd: str | None = None

    def __post_init__(self) -> None:
        if bool(self.command) == bool(self.url):
            raise ValueError("give the upstream MCP server as a command or as a URL, not both")

    @property
    def transport(self) -> str:
        return "http" if self.url else "stdio"

    def describe(self) -> str:
        return self.url or " ".join(self.command)


@dataclass
class _CallTag(ClientMessageMetadata):
    """Marks the message of one forwarded ``tools/call`` on its way to the upstream, so the
    write pump learns the upstream's request id (for cancellation and the HTTP bearer)."""

    token: str | None = None
    upstream_id: types.RequestId | None = None


@dataclass(eq=False)
class _Session:
    """One client session: its upstream session, its task, and what the pumps observed."""

    proxy: GuardingProxy
    upstream: ClientSession | None = None
    init: types.InitializeResult | None = None
    task: TaskSession | None = None
    start_error: BaseException | None = None
    server_session: ServerSession | None = None
    known_tools: set[str] = field(default_factory=set)
    cancelled: dict[types.RequestId, str] = field(default_factory=dict)
    bearer: dict[types.RequestId, str] = field(default_factory=dict)
    progress: dict[types.ProgressToken, types.RequestId] = field(default_factory=dict)
    client_closed: bool = False
    upstream_gone: str | None = None
    ended: bool = False

    async def start_task(self) -> None:
        """Start the session's task (at the client's ``initialize``), written on the guard's
        writer thread (the event loop never waits for the store); a failure is kept and every
        tool call of the session is refused with it (fail closed)."""
        if self.task is not None or self.start_error is not None:
            return
        proxy = self.proxy
        try:
            self.task = await proxy.guard.task(proxy.intent, **proxy.params).astart()
        except Exception as exc:
            self.start_error = exc
            log.error("toolguard-mcp: the session's task could not start: %s", exc)

    def _ending(self) -> TaskSession | None:
        """The task to end now (None when it ended, never started or was already ended)."""
        if self.ended:
            return None
        self.ended = True
        task = self.task
        if task is None or task.status != "active":
            return None
        return task

    def end_task(self, status: str, reason: str) -> None:
        """End the session's task (idempotent): revoke its credentials, record ``task_end``.
        From async code use :meth:`aend_task` (this one writes on the calling thread)."""
        task = self._ending()
        if task is not None:
            self._ended(task, status, reason, lambda: task.end(status, reason=reason))

    async def aend_task(self, status: str, reason: str) -> None:
        """:meth:`end_task` on the guard's writer thread, awaited even by a cancelled caller
        (the end is written before the upstream is shut down)."""
        task = self._ending()
        if task is None:
            return
        with anyio.CancelScope(shield=True):
            try:
                await task.aend(status, reason=reason)
            except ToolGuardError as exc:
                self._ended(task, status, reason, None, exc)
            else:
                self._ended(task, status, reason, None)

    @staticmethod
    def _ended(
        task: TaskSession,
        status: str,
        reason: str,
        end: Callable[[], None] | None,
        error: ToolGuardError | None = None,
    ) -> None:
        if end is not None:
            try:
                end()
            except ToolGuardError as exc:
                error = exc
        if error is not None:  # the credentials are revoked in memory all the same
            log.error("toolguard-mcp: could not record the end of task %s: %s", task.task_id, error)
        else:
            log.info("toolguard-mcp: task %s ended (%s): %s", task.task_id, status, reason)


_session_var: contextvars.ContextVar[_Session | None] = contextvars.ContextVar(
    "toolguard_mcp_session", default=None
)


def _current() -> _Session:
    state = _session_var.get()
    if state is None or state.upstream is None:  # pragma: no cover - handlers run in run()
        raise McpError(
            types.ErrorData(code=types.INTERNAL_ERROR, message="toolguard-mcp: no upstream session")
        )
    return state


class _BearerPerCall(httpx.Auth):
    """Sets ``Authorization: Bearer <credential>`` on the one HTTP request that carries a
    forwarded ``tools/call`` (found by its JSON-RPC id); no other request gets a token."""

    def __init__(self, tokens: Mapping[types.RequestId, str]) -> None:
        self._tokens = tokens

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers.pop("Authorization", None)
        if self._tokens and request.method == "POST":
            try:
                body = json.loads(request.content)
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("method") == "tools/call":
                token = self._tokens.get(body.get("id"))  # type: ignore[arg-type]
                if token is not None:
                    request.headers["Authorization"] = f"Bearer {token}"
        yield request


class GuardingProxy(Server[Any, Any]):
    """The guarding MCP proxy: serve it over stdio (:meth:`serve_stdio`) or streamable HTTP
    (:meth:`asgi_app`); every client session is one task of ``intent`` with ``params``."""

    def __init__(
        self,
        guard: Guard,
        intent: str,
        upstream: Upstream,
        *,
        params: Mapping[str, Any] | None = None,
        upstream_timeout: float = 30.0,
    ) -> None:
        super().__init__("toolguard-mcp")
        self.guard = guard
        self.intent = intent
        self.params: dict[str, Any] = dict(params or {})
        self.upstream = upstream
        self.upstream_timeout = upstream_timeout
        """Seconds the upstream has to answer ``initialize``."""
        guard.task(intent, **self.params)  # an unknown intent or a missing parameter: now
        self.tools: frozenset[str] = frozenset(guard.config.intents[intent].tools)
        """The tools the intent names: the only upstream tools offered to the client."""
        self.sessions: set[_Session] = set()
        self.stop_reason: str | None = None
        self.upstream_failures = 0
        self.client_closed = False
        """Whether the last session that ended was closed by its client."""
        """Sessions that ended because the upstream went away."""
        handlers = self.request_handlers
        handlers[types.ListToolsRequest] = self._list_tools
        handlers[types.CallToolRequest] = self._call_tool
        for request, result in (
            (types.ListResourcesRequest, types.ListResourcesResult),
            (types.ListResourceTemplatesRequest, types.ListResourceTemplatesResult),
            (types.ReadResourceRequest, types.ReadResourceResult),
            (types.SubscribeRequest, types.EmptyResult),
            (types.UnsubscribeRequest, types.EmptyResult),
            (types.ListPromptsRequest, types.ListPromptsResult),
            (types.GetPromptRequest, types.GetPromptResult),
            (types.CompleteRequest, types.CompleteResult),
            (types.SetLevelRequest, types.EmptyResult),
        ):
            handlers[request] = self._forwarder(result)
        self.notification_handlers[types.RootsListChangedNotification] = self._forward_notice

    # -- one client session ------------------------------------------------------------------

    async def run(
        self,
        read_stream: ReadStream,
        write_stream: WriteStream,
        initialization_options: InitializationOptions | None = None,
        raise_exceptions: bool = False,
        stateless: bool = False,
    ) -> None:
        """Serve one client session (the SDK's transports call this): open the upstream
        session, run the MCP server, and end the session's task however it ends."""
        state = _Session(self)
        self.sessions.add(state)
        status, reason = "error", "the proxy session failed"
        try:
            async with AsyncExitStack() as stack:
                upstream_read, upstream_write = await stack.enter_async_context(
                    self._connect(state)
                )
                u_read_in, u_read_out = anyio.create_memory_object_stream[
                    SessionMessage | Exception
                ](0)
                u_write_in, u_write_out = anyio.create_memory_object_stream[SessionMessage](0)
                c_read_in, c_read_out = anyio.create_memory_object_stream[
                    SessionMessage | Exception
                ](0)
                for stream in (u_read_in, u_read_out, u_write_in, u_write_out, c_read_in):
                    stack.enter_context(stream)  # closed however the session ends
                stack.enter_context(c_read_out)
                group = await stack.enter_async_context(anyio.create_task_group())
                group.start_soon(self._pump_upstream_reads, upstream_read, u_read_in, state, group)
                group.start_soon(self._pump_upstream_writes, u_write_out, upstream_write, state)
                upstream = await stack.enter_async_context(
                    ClientSession(
                        u_read_out,
                        u_write_in,
                        message_handler=self._upstream_message_handler(state),
                        client_info=types.Implementation(name="toolguard-mcp", version="0.1.0"),
                    )
                )
                with anyio.fail_after(self.upstream_timeout):
                    state.init = await upstream.initialize()
                state.upstream = upstream
                group.start_soon(self._pump_client_reads, read_stream, c_read_in, state)
                token = _session_var.set(state)
                try:
                    await super().run(
                        c_read_out, write_stream, self._options(state.init), raise_exceptions,
                        stateless,
                    )  # fmt: skip
                finally:
                    _session_var.reset(token)
                status, reason = self._end_status(state)
                await state.aend_task(status, reason)  # before the upstream is shut down
                group.cancel_scope.cancel()
        except BaseException as exc:
            if state.ended:
                raise
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                status, reason = self._end_status(state, cancelled=True)
            elif state.upstream is None:  # it could not be started, reached or initialized
                self.upstream_failures += 1
                reason = (
                    f"the upstream MCP server {self.upstream.describe()!r} could not be "
                    f"started or initialized ({_describe(exc)})"
                )
                log.error("toolguard-mcp: %s", reason)
            elif _transport_failure(exc):  # e.g. an HTTP upstream gone: its transport fails
                self.upstream_failures += 1
                reason = state.upstream_gone = (
                    f"the connection to the upstream MCP server failed ({_describe(exc)})"
                )
                log.error("toolguard-mcp: %s", reason)
            else:
                reason = f"the proxy session failed ({_describe(exc)})"
                log.error("toolguard-mcp: %s", reason)
            raise
        finally:
            await state.aend_task(status, reason)
            self.sessions.discard(state)
            self.client_closed = state.client_closed and state.upstream_gone is None

    def _end_status(self, state: _Session, *, cancelled: bool = False) -> tuple[str, str]:
        if self.stop_reason is not None:
            return "cancelled", self.stop_reason
        if state.upstream_gone is not None:
            return "error", state.upstream_gone
        if state.client_closed:
            return "ok", "the MCP client closed the session"
        if cancelled:
            return "cancelled", "the proxy stopped serving the session"
        return "ok", "the MCP session ended"

    def end_all(self, status: str, reason: str) -> None:
        """End the task of every session still open (at shutdown), on this thread; from async
        code use :meth:`aend_all`."""
        for state in list(self.sessions):
            state.end_task(status, reason)

    async def aend_all(self, status: str, reason: str) -> None:
        """:meth:`end_all` on the guard's writer thread (the event loop keeps running)."""
        for state in list(self.sessions):
            await state.aend_task(status, reason)

    @asynccontextmanager
    async def _connect(self, state: _Session) -> AsyncIterator[tuple[ReadStream, WriteStream]]:
        upstream = self.upstream
        if upstream.url is not None:
            client = httpx.AsyncClient(
                auth=_BearerPerCall(state.bearer),
                verify=tls_context(),  # one per process, not the CA bundle read per session
                follow_redirects=False,
                timeout=httpx.Timeout(30.0, read=300.0),
            )
            async with client, streamable_http_client(upstream.url, http_client=client) as streams:
                yield streams[0], streams[1]
        else:
            params = StdioServerParameters(
                command=upstream.command[0],
                args=list(upstream.command[1:]),
                env=dict(upstream.env) if upstream.env is not None else None,
                cwd=upstream.cwd,
            )
            async with stdio_client(params) as streams:
                yield streams

    def _options(self, init: types.InitializeResult) -> InitializationOptions:
        """The upstream's identity and capabilities, as far as the proxy serves them."""
        caps = init.capabilities
        return InitializationOptions(
            server_name=init.serverInfo.name,
            server_version=init.serverInfo.version,
            capabilities=types.ServerCapabilities(
                tools=caps.tools or types.ToolsCapability(),
                resources=caps.resources,
                prompts=caps.prompts,
                logging=caps.logging,
                completions=caps.completions,
            ),
            instructions=init.instructions,
        )

    # -- pumps: what passes between the transports and the SDK sessions ---------------------

    async def _pump_client_reads(
        self,
        source: ReadStream,
        sink: MemoryObjectSendStream[SessionMessage | Exception],
        state: _Session,
    ) -> None:
        async with sink:
            try:
                async for message in source:
                    if isinstance(message, SessionMessage):
                        root = message.message.root
                        if isinstance(root, types.JSONRPCRequest) and root.method == "initialize":
                            await state.start_task()
                        elif isinstance(root, types.JSONRPCNotification) and (
                            root.method == _CANCELLED
                        ):
                            params = root.params or {}
                            request_id = params.get("requestId")
                            if isinstance(request_id, (str, int)):
                                why = params.get("reason")
                                state.cancelled[request_id] = (
                                    f"the MCP client cancelled the call ({why})"
                                    if isinstance(why, str) and why
                                    else "the MCP client cancelled the call"
                                )
                    await sink.send(message)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass
            state.client_closed = True

    async def _pump_upstream_reads(
        self,
        source: ReadStream,
        sink: MemoryObjectSendStream[SessionMessage | Exception],
        state: _Session,
        group: anyio.abc.TaskGroup,
    ) -> None:
        async with sink:
            try:
                async for message in source:
                    if isinstance(message, httpx.TransportError):
                        state.upstream_gone = (
                            f"the upstream MCP server could not be reached ({message!r})"
                        )
                        break
                    await sink.send(message)
                else:
                    if not (state.client_closed or state.ended):
                        state.upstream_gone = "the upstream MCP server closed its connection"
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
        if state.upstream_gone is not None and not state.ended:
            self.upstream_failures += 1
            log.error("toolguard-mcp: %s; ending the session", state.upstream_gone)
            await state.aend_task("error", state.upstream_gone)
            group.cancel_scope.cancel()  # closes the client's session too

    async def _pump_upstream_writes(
        self, source: MemoryObjectReceiveStream[SessionMessage], sink: WriteStream, state: _Session
    ) -> None:
        async with source:
            async for message in source:
                tag = message.metadata
                if isinstance(tag, _CallTag):
                    root = message.message.root
                    if isinstance(root, types.JSONRPCRequest):
                        tag.upstream_id = root.id
                        if tag.token is not None:
                            state.bearer[root.id] = tag.token
                    message = SessionMessage(message.message)
                try:
                    await sink.send(message)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return

    def _upstream_message_handler(self, state: _Session) -> MessageHandlerFnT:
        async def handle(
            message: RequestResponder[types.ServerRequest, types.ClientResult]
            | types.ServerNotification
            | Exception,
        ) -> None:
            if not isinstance(message, types.ServerNotification):
                return  # server-to-client requests are answered by ClientSession's defaults
            client = state.server_session
            if client is None:
                return  # nothing asked of the upstream yet: nothing to report on
            related = None
            if isinstance(message.root, types.ProgressNotification):
                related = state.progress.get(message.root.params.progressToken)
            try:
                await client.send_notification(
                    types.ServerNotification(_bare(message.root)), related_request_id=related
                )
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass

        return handle

    # -- handlers -------------------------------------------------------------------------------

    def _enter(self) -> _Session:
        state = _current()
        context = self.request_context
        state.server_session = context.session
        meta = context.meta
        if meta is not None and meta.progressToken is not None:
            state.progress[meta.progressToken] = context.request_id
        return state

    def _forwarder(self, result_type: type[Any]) -> Callable[[Any], Awaitable[ServerResult]]:
        async def forward(request: Any) -> ServerResult:
            state = self._enter()
            assert state.upstream is not None
            result = await state.upstream.send_request(_outgoing(request), result_type)
            return ServerResult(result)

        return forward

    async def _forward_notice(self, notification: Any) -> None:
        state = _session_var.get()
        if state is not None and state.upstream is not None:
            await state.upstream.send_notification(types.ClientNotification(_bare(notification)))

    async def _list_tools(self, request: types.ListToolsRequest) -> ServerResult:
        state = self._enter()
        assert state.upstream is not None
        result = await state.upstream.send_request(_outgoing(request), types.ListToolsResult)
        state.known_tools.update(t.name for t in result.tools)
        offered = [t for t in result.tools if t.name in self.tools]
        return ServerResult(result.model_copy(update={"tools": offered}))

    async def _upstream_has(self, state: _Session, name: str) -> bool:
        if name in state.known_tools:
            return True
        assert state.upstream is not None
        cursor: str | None = None
        while True:
            page = await state.upstream.list_tools(
                params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
            )
            state.known_tools.update(t.name for t in page.tools)
            cursor = page.nextCursor
            if not cursor or name in state.known_tools:
                return name in state.known_tools

    async def _call_tool(self, request: types.CallToolRequest) -> ServerResult:
        state = self._enter()
        upstream = state.upstream
        assert upstream is not None
        params = request.params
        name, arguments = params.name, params.arguments or {}
        request_id = self.request_context.request_id
        if state.start_error is not None:
            return _refuse_session(state.start_error)
        try:
            # the session's task is current for the check, which runs on the guard's writer
            # thread (the event loop never waits for the store)
            current = task_var.set(state.task)
            try:
                permit = await self.guard.aauthorize(
                    name, arguments, correlation_id=str(request_id)
                )
            finally:
                task_var.reset(current)
        except PolicyDenied as denial:
            return _error_result(DENIED + denial.reason)
        except ToolGuardError as exc:  # AuditError and the like: nothing ran
            raise _audit_failure(exc) from None
        if not await self._upstream_has(state, name):
            # after the policy (a refused caller learns nothing of the upstream's tools), and in
            # the trail: the allowed request is followed by this error outcome
            missing = f"the upstream MCP server offers no tool '{name}'; the call was not forwarded"
            self.guard.finish(permit, error=UpstreamToolError(missing))
            return _error_result(DENIED + missing)
        token = permit.credential.token
        meta = params.meta.model_dump(by_alias=True) if params.meta is not None else {}
        meta.pop(CREDENTIAL_META_KEY, None)  # only the proxy presents credentials
        http = self.upstream.url is not None
        if not http:
            meta[CREDENTIAL_META_KEY] = token
        forwarded = params.model_copy(
            update={"meta": types.RequestParams.Meta.model_validate(meta), "task": None}
        )
        tag = _CallTag(token=token if http else None)
        try:
            result = await upstream.send_request(
                types.ClientRequest(types.CallToolRequest(params=forwarded)),
                types.CallToolResult,
                metadata=tag,
            )
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                why = state.cancelled.pop(request_id, None)
                if why is None:
                    why = (
                        "the MCP client closed the session before the call finished"
                        if state.client_closed or state.upstream_gone or self.stop_reason
                        else "the call was cancelled"
                    )
                self.guard.finish(permit, error=asyncio.CancelledError(why))
                await self._cancel_upstream(state, tag, why)
            raise
        except BaseException as exc:
            self.guard.finish(permit, error=exc)
            scrubbed = scrub(exc, [token])
            if scrubbed is not exc:  # its text still showed the token: the replacement goes
                raise scrubbed from None
            raise
        finally:
            if tag.upstream_id is not None:
                state.bearer.pop(tag.upstream_id, None)
        result = scrub(result, [token])
        error = None
        if result.isError:
            text = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
            error = UpstreamToolError(text or "the upstream tool returned an error")
        self.guard.finish(permit, error=error)
        return ServerResult(result)

    async def _cancel_upstream(self, state: _Session, tag: _CallTag, why: str) -> None:
        """Tell the upstream to stop a forwarded call (when it was sent and is still open)."""
        upstream = state.upstream
        if tag.upstream_id is None or upstream is None or state.upstream_gone is not None:
            return
        notice = types.CancelledNotification(
            params=types.CancelledNotificationParams(requestId=tag.upstream_id, reason=why)
        )
        with anyio.move_on_after(2):
            try:
                await upstream.send_notification(types.ClientNotification(notice))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass


def _leaf(exc: BaseException) -> BaseException:
    leaves = getattr(exc, "exceptions", None)  # an exception group: its first leaf
    while leaves:
        exc = leaves[0]
        leaves = getattr(exc, "exceptions", None)
    return exc


def _describe(exc: BaseException) -> str:
    exc = _leaf(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _transport_failure(exc: BaseException) -> bool:
    return isinstance(_leaf(exc), (httpx.TransportError, OSError))


def _outgoing(request: Any) -> types.ClientRequest:
    """The client's request as a new request to the upstream."""
    return types.ClientRequest(_bare(request))


def _bare(message: Any) -> Any:
    """A received request or notification without its JSON-RPC envelope (``jsonrpc``, ``id``
    are kept by the SDK's models as extra fields): just its method and params, to send on."""
    return type(message)(method=message.method, params=message.params)


def _error_result(text: str) -> ServerResult:
    return ServerResult(
        types.CallToolResult(content=[types.TextContent(type="text", text=text)], isError=True)
    )


def _audit_failure(exc: BaseException) -> McpError:
    return McpError(
        types.ErrorData(
            code=types.INTERNAL_ERROR,
            message=(
                f"toolguard could not check or record this call, so it was not forwarded "
                f"({type(exc).__name__}: {exc})"
            ),
        )
    )


def _refuse_session(error: BaseException) -> ServerResult:
    """Every call of a session whose task could not start: a denial, or a JSON-RPC error."""
    if isinstance(error, PolicyDenied):
        return _error_result(DENIED + error.reason)
    if isinstance(error, AuditError):
        raise _audit_failure(error)
    raise McpError(
        types.ErrorData(
            code=types.INTERNAL_ERROR,
            message=f"toolguard-mcp could not start this session's task: {error}",
        )
    )


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    """``["job_id=42", ...]`` as a mapping; raises ValueError naming a malformed pair."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param {pair!r} is not NAME=VALUE; write e.g. --param job_id=42")
        out[key.strip()] = value
    return out

"""lockd's XML-RPC, as a client sees it: a call's body, and an answer's
body turned into its value, the LockError of its fault, or what fault 7
says of the outcome; and the shape lockd answers each of its calls with,
checked so that nonsense is a ProtocolError, never a value.
"""

import xmlrpc.client

from lockd_errors import from_fault

from .errors import ProtocolError, _Lost, _NotSent

# Fault 7's text when the change surely did not happen (any other fault 7:
# the outcome is unknown).
_DID_NOT_HAPPEN = "Lock store unavailable: the change did not happen"


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_lock(value):
    """Whether ``value`` is a lock as lockd answers it."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("resource"), str)
        and isinstance(value.get("client"), str)
        and type(value.get("token")) is int
        and _is_number(value.get("acquired"))
        and (value.get("expires") is None or _is_number(value["expires"]))
        and (value.get("ttl") is None or _is_number(value["ttl"]))
    )


# What lockd answers to each of these calls.
_SHAPES = {
    "lockd.acquire": _is_lock,
    "lockd.renew": _is_lock,
    "lockd.status": lambda v: v is None or _is_lock(v),
    "lockd.break_lock": _is_lock,
    "lockd.check": lambda v: isinstance(v, bool),
    "lockd.list": lambda v: (type(v) is int) or (isinstance(v, list) and all(_is_lock(x) for x in v)),
}


def encode(method, params):
    """The body of a call of ``method`` with ``params``."""
    return xmlrpc.client.dumps(tuple(params), method, allow_none=True).encode()


def decode(method, data, url):
    """``method``'s value in ``data``, the answer of the host ``url``; a
    LockError for its fault; _NotSent or _Lost for fault 7."""
    try:
        (value,), _ = xmlrpc.client.loads(data)
    except xmlrpc.client.Fault as fault:
        code, text = fault.faultCode, fault.faultString
        if type(code) is not int or not isinstance(text, str):
            said = "%s answered a malformed fault: %r" % (url, data[:80])
            raise ProtocolError(said, url) from None
        if code == 7 and text.startswith(_DID_NOT_HAPPEN):
            raise _NotSent(text) from None
        if code == 7:
            raise _Lost(text) from None
        raise from_fault(code, text) from None
    except Exception:
        shown = data[:60].decode("utf-8", "replace")
        raise ProtocolError("%s answered something that is not XML-RPC: %r" % (url, shown), url) from None
    shape = _SHAPES.get(method)
    if shape is not None and not shape(value):
        raise ProtocolError("%s answered %s with %.80r, not what lockd answers" % (url, method, value), url)
    return value

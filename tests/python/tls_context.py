"""The ssl.SSLContext of a test's https calls, from the environment:
LOCKD_CA (the CA to trust), LOCKD_CERT and LOCKD_KEY (the client's own
certificate, if any). None when LOCKD_CA is not set."""
import os
import ssl


def context():
    ca = os.environ.get("LOCKD_CA")
    if not ca:
        return None
    ctx = ssl.create_default_context(cafile=ca)
    if os.environ.get("LOCKD_CERT"):
        ctx.load_cert_chain(os.environ["LOCKD_CERT"], os.environ["LOCKD_KEY"])
    return ctx

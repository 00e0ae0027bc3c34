//! Who calls, and what they may do: the role of a request's caller, from
//! the user its TLS client certificate names or its HTTP Basic
//! credentials, as `--auth-file` lists them.

use super::answer::Answer;
use crate::auth::{AuthFile, Role};
use crate::tls::Relayed;
use tiny_http::Request;

/// The role of `request`'s caller, or the answer refusing it:
///
/// - with TLS, a connection that did not come through lockd's TLS front
///   door (someone on this machine reaching the loopback port) gets 403;
/// - without `--auth-file`, everyone who got in may do everything;
/// - a user named by a client certificate has the role the file gives
///   it, and 403 if it is not listed (its password plays no part);
/// - anyone else must log in with HTTP Basic authentication (401 asks).
pub fn role(
    request: &Request,
    auth: Option<&AuthFile>,
    relayed: Option<&Relayed>,
) -> Result<Role, Answer> {
    let user = match relayed {
        None => None,
        Some(relayed) => match relayed.peer(request.remote_addr()) {
            Some(peer) => peer.user,
            None => {
                return Err(Answer::text(
                    403,
                    "lockd takes connections on its TLS port only\n",
                ));
            }
        },
    };
    let Some(credentials) = auth.map(AuthFile::current) else {
        return Ok(Role::Operator);
    };
    if let Some(user) = user {
        return credentials
            .role_of(&user)
            .ok_or_else(|| Answer::text(403, format!("{user:?} is not a user of this lockd\n")));
    }
    let authorization = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str());
    credentials
        .authenticate(authorization)
        .ok_or_else(|| Answer::text(401, "").with("WWW-Authenticate", "Basic realm=\"lockd\""))
}

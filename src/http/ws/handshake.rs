//! The WebSocket opening handshake (RFC 6455, section 4.2), over HTTP/1.1.
//!
//! Why not axum's `WebSocketUpgrade`: it hands over a socket that only
//! sends whole messages, each framed (and copied) by tungstenite for each
//! socket. The session instead writes every event's frame as encoded once
//! for all sockets ([`crate::event::Event::ws_frame`]), straight onto the
//! connection under tungstenite, which still reads the client's frames and
//! writes the session's replies and control frames. That takes the
//! upgraded connection itself, which this handshake yields.

use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header, request::Parts};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::http::errors::ApiError;

/// A WebSocket over the upgraded connection.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A valid opening handshake, waiting for its answer.
pub struct Handshake {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let refuse = |why: &str| {
            ApiError::bad_request(
                "websocket_required",
                format!("/ws takes a WebSocket upgrade: {why}"),
            )
        };
        if parts.version != Version::HTTP_11 {
            return Err(refuse("WebSocket needs HTTP/1.1"));
        }
        if parts.method != Method::GET {
            return Err(refuse("the request must be a GET"));
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(refuse("`Connection` must list `upgrade`"));
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(refuse("`Upgrade` must be `websocket`"));
        }
        if parts.headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13"))
        {
            return Err(refuse("`Sec-WebSocket-Version` must be 13"));
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or_else(|| refuse("`Sec-WebSocket-Key` is missing"))?
            .clone();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| refuse("this connection cannot be upgraded"))?;
        Ok(Handshake { key, on_upgrade })
    }
}

impl Handshake {
    /// The `101 Switching Protocols` answer, and the socket it opens once
    /// sent (`None` if the connection failed first).
    pub fn accept(
        self,
        config: WebSocketConfig,
    ) -> (Response, impl Future<Output = Option<Socket>> + Send) {
        let accept = derive_accept_key(self.key.as_bytes());
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(Default::default())
            .expect("a valid response head");
        let on_upgrade = self.on_upgrade;
        let socket = async move {
            let upgraded = on_upgrade.await.ok()?;
            Some(
                WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await,
            )
        };
        (response, socket)
    }
}

/// Whether header `name` lists `token` (case-insensitively), as
/// `Connection: keep-alive, Upgrade` lists `upgrade`.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_in_lists_whatever_their_case() {
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(!has_token(&headers, header::CONNECTION, "close"));
        headers.append(header::UPGRADE, "h2c".parse().unwrap());
        headers.append(header::UPGRADE, "WebSocket".parse().unwrap());
        assert!(has_token(&headers, header::UPGRADE, "websocket"));
        assert!(!has_token(&headers, header::UPGRADE, "web"));
    }
}

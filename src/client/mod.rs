//! Command-line clients: `sluice pub`, `sluice sub` and `sluice replay`.
//!
//! They ship in the hub's binary so that one download gives a user both
//! ends, but they speak only the public HTTP API, like any other client:
//! nothing here reaches into the hub, so they work against any hub of a
//! compatible version, local or remote. What they share lives here: the
//! connection options, the HTTP client, and the mapping of every failure to
//! one line that `main` prints as `sluice: …`.

pub mod console;
pub mod publish;
pub mod replay;
pub mod subscribe;

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::Deserialize;

/// Where the hub is and how to authenticate: shared by every client command.
#[derive(clap::Args, Debug, Clone)]
pub struct HubArgs {
    /// URL of the hub (a path prefix is kept, for a hub behind a proxy).
    #[arg(long, env = "SLUICE_SERVER", default_value = "http://127.0.0.1:8000")]
    pub server: String,
    /// Token sent as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// How long a connection may take to open: a hub that is up answers at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A response body silent for this long is taken as a dead connection. The
/// hub sends a keep-alive after 15 s of silence by default, so this is four
/// missed keep-alives; a stream that is cut is resumed, so a false alarm only
/// costs a reconnection.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTP client of one command, bound to one hub.
pub struct HubClient {
    http: reqwest::Client,
    /// The server URL, its path ending with `/` so that endpoints join onto it.
    base: Url,
    token: Option<String>,
}

impl HubClient {
    pub fn new(args: &HubArgs) -> anyhow::Result<HubClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the HTTP client: {}", root_cause(&e)))?;
        Ok(HubClient {
            http,
            base: base_url(&args.server)?,
            token: args.token.clone(),
        })
    }

    /// The URL of an endpoint (`"publish"`, `"ndjson"`) of this hub.
    pub fn url(&self, endpoint: &str) -> Url {
        self.base
            .join(endpoint)
            .expect("an endpoint name is a relative URL")
    }

    /// A request to `url`, with the token when there is one.
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request`; any answer but a 2xx is an error carrying the hub's
    /// own message.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, HubError> {
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        // The error body is short; if even it cannot be read, the status says enough.
        let body = response.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .ok()
            .map(|b| format!("{} ({} {})", b.error.message, status.as_u16(), b.error.code));
        Err(HubError::Refused { status, message })
    }

    /// The error for a request or a response body that failed in transit.
    pub fn transport(&self, error: &reqwest::Error) -> HubError {
        let cause = root_cause(error);
        if error.is_connect() {
            HubError::Unreachable {
                server: self.base.to_string(),
                cause,
            }
        } else if error.is_builder() {
            HubError::Invalid { cause }
        } else if error.is_timeout() {
            HubError::Silent {
                server: self.base.to_string(),
            }
        } else {
            HubError::Lost { cause }
        }
    }
}

/// What can go wrong talking to the hub, each said in one line.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot connect to the hub at {server}: {cause}")]
    Unreachable { server: String, cause: String },
    #[error("invalid request: {cause}")]
    Invalid { cause: String },
    #[error("the hub at {server} did not answer in time")]
    Silent { server: String },
    #[error("connection to the hub lost: {cause}")]
    Lost { cause: String },
    #[error("{}", match message {
        Some(message) => format!("the hub refused: {message}"),
        None => format!("the hub answered {status}"),
    })]
    Refused {
        status: StatusCode,
        message: Option<String>,
    },
}

impl HubError {
    /// Whether trying again later may succeed: the hub being down, restarting
    /// or overloaded may pass; a request it refuses (bad topic, bad token)
    /// will be refused again.
    pub fn is_transient(&self) -> bool {
        match self {
            HubError::Refused { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::TOO_MANY_REQUESTS
                    || *status == StatusCode::REQUEST_TIMEOUT
            }
            HubError::Invalid { .. } => false,
            _ => true,
        }
    }
}

/// The hub's error body: `{"error":{"code":…,"message":…}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// `server` as a base URL: `http://` is assumed when no scheme is given
/// (`localhost:8000`), and the path gets a trailing `/` so that
/// `http://proxy/sluice` + `publish` is `http://proxy/sluice/publish`.
fn base_url(server: &str) -> anyhow::Result<Url> {
    let with_scheme = if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    };
    let mut url = Url::parse(&with_scheme)
        .map_err(|e| anyhow::anyhow!("invalid --server URL {server:?}: {e}"))?;
    if url.scheme() != "http" {
        anyhow::bail!("invalid --server URL {server:?}: only http:// is supported");
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The innermost cause of an error: for a failed connection that is the
/// system's own words ("Connection refused (os error 111)"), which say more
/// than the layers of wrapping above it.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_become_bases_that_endpoints_join_onto() {
        for (server, publish) in [
            ("http://127.0.0.1:8000", "http://127.0.0.1:8000/publish"),
            ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/publish"),
            ("localhost:9000", "http://localhost:9000/publish"),
            ("http://proxy/sluice", "http://proxy/sluice/publish"),
            ("http://proxy/sluice/?x=1#f", "http://proxy/sluice/publish"),
        ] {
            assert_eq!(
                base_url(server).unwrap().join("publish").unwrap().as_str(),
                publish
            );
        }
    }

    #[test]
    fn unusable_server_urls_are_refused() {
        for server in ["http://", "ftp://host", "https://host", "http://a b"] {
            let error = base_url(server).unwrap_err().to_string();
            assert!(
                error.starts_with("invalid --server URL"),
                "{server}: {error}"
            );
        }
    }

    #[test]
    fn refusals_carry_the_hubs_message_and_only_some_are_transient() {
        let refused = |status, message: Option<&str>| HubError::Refused {
            status,
            message: message.map(String::from),
        };
        let bad = refused(
            StatusCode::BAD_REQUEST,
            Some("topic \"a b\" is bad (400 invalid_topic)"),
        );
        assert_eq!(
            bad.to_string(),
            "the hub refused: topic \"a b\" is bad (400 invalid_topic)"
        );
        assert!(!bad.is_transient());
        assert!(!refused(StatusCode::UNAUTHORIZED, None).is_transient());
        let unavailable = refused(StatusCode::SERVICE_UNAVAILABLE, None);
        assert_eq!(
            unavailable.to_string(),
            "the hub answered 503 Service Unavailable"
        );
        assert!(unavailable.is_transient());
        assert!(
            HubError::Lost {
                cause: "reset".into()
            }
            .is_transient()
        );
    }
}

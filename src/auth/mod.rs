//! Who may do what.
//!
//! With a key configured (`jwt_secret` for HS256, or `jwt_public_key`, an
//! RSA or EC public key in PEM, for RS256 or ES256), a request may carry a
//! JWT: in `Authorization: Bearer`, in the `access_token` query parameter
//! (EventSource cannot set headers) or in a cookie (`jwt_cookie`). Its
//! `sluice` claim grants topic patterns (the syntax of subscriptions):
//!
//! ```json
//! {"sub": "alice", "exp": 1795330686,
//!  "sluice": {"publish": ["trades/*"], "subscribe": ["**", "secret/alice/**"], "admin": false}}
//! ```
//!
//! - publishing needs a token whose `publish` patterns cover the topic;
//! - a private topic (`private_topics`, `[[topics]]` with `private = true`,
//!   and `$sys/**`) is read only with a `subscribe` grant that covers it;
//!   public topics need no token, unless `require_subscribe_token`;
//! - `/clients`, `/topics` and `/metrics` need `admin: true`.
//!
//! Without a key, nobody has a token: publishing and the admin endpoints
//! are for loopback addresses only, unless `allow_anonymous_publish`.
//!
//! This module authenticates and decides; the hub only applies the
//! [`Access`] a [`Caller`] hands it, folded into a subscription's
//! [`TopicFilter`].

pub mod mint;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::{StatusCode, header, request::Parts};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Sleep};

use crate::config::Config;
use crate::http::errors::ApiError;
use crate::server::ConnInfo;
use crate::topic::{Access, PatternSet, TopicFilter};

/// How far `exp` and `nbf` may be off, for clocks that differ a little.
pub const LEEWAY_S: u64 = 5;
/// The query parameter that may carry a token.
pub const QUERY_PARAMETER: &str = "access_token";
/// Always private once a key is configured: the hub's own topics.
const SYS_TOPICS: &str = "$sys/**";

/// The claims of a token, as minted and as verified.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default)]
    pub sluice: Grants,
}

/// What the `sluice` claim grants. Unknown fields are ignored.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    /// Patterns the holder may publish to.
    pub publish: Vec<String>,
    /// Private patterns the holder may read (public topics need no grant).
    pub subscribe: Vec<String>,
    /// Whether the holder may use `/clients`, `/topics` and `/metrics`.
    pub admin: bool,
}

/// The key that verifies tokens, with the algorithms of its family: a
/// token signed with any other algorithm (`none`, or HS256 for a public
/// key) is refused before its signature is looked at.
struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    fn new(key: DecodingKey, algorithms: &[Algorithm]) -> Verifier {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.to_vec();
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        // Grants live in the `sluice` claim; audiences are not checked.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Verifier { key, validation }
    }

    /// Reads the key of `config`: the secret, or the public key's file.
    fn from_config(config: &Config) -> anyhow::Result<Option<(Verifier, &'static str)>> {
        use Algorithm::*;
        if let Some(secret) = &config.jwt_secret {
            let key = DecodingKey::from_secret(secret.0.as_bytes());
            return Ok(Some((Verifier::new(key, &[HS256, HS384, HS512]), "HS256")));
        }
        let Some(path) = &config.jwt_public_key else {
            return Ok(None);
        };
        let at = path.display();
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("jwt_public_key {at}: {e}"))?;
        if String::from_utf8_lossy(&pem).contains("PRIVATE KEY") {
            anyhow::bail!("jwt_public_key {at} is a private key: give the hub the public key");
        }
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            let family = [RS256, RS384, RS512, PS256, PS384, PS512];
            Ok(Some((Verifier::new(key, &family), "RS256")))
        } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
            Ok(Some((Verifier::new(key, &[ES256, ES384]), "ES256")))
        } else {
            anyhow::bail!("jwt_public_key {at} is not an RSA or EC public key in PEM")
        }
    }

    fn verify(&self, token: &str) -> Result<Token, ApiError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|error| invalid_token(why(error.kind())))?
            .claims;
        let grants = |field: &str, list: &[String]| {
            PatternSet::parse(list.iter().map(String::as_str))
                .map_err(|e| invalid_token(format!("the token's sluice.{field} grant: {e}")))
        };
        Ok(Token {
            publish: grants("publish", &claims.sluice.publish)?,
            subscribe: Arc::new(grants("subscribe", &claims.sluice.subscribe)?),
            admin: claims.sluice.admin,
            deadline: deadline(claims.exp),
            subject: claims.sub,
        })
    }
}

/// Why a token was refused, in words that never quote it.
fn why(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => {
            "the token's algorithm is not the one of the hub's key".into()
        }
        ErrorKind::Json(_) => "the token's header or claims do not parse: it needs exp (a \
             number) and an alg the hub accepts; sluice.publish and sluice.subscribe are lists \
             of patterns, sluice.admin a boolean"
            .into(),
        _ => "the token is not a well-formed JWT".into(),
    }
}

/// When a token whose `exp` is `exp` stops being honoured: the second
/// after `exp` plus the leeway, when verifying it starts to fail, but no
/// later than [`LONGEST_VALIDITY`] from now.
fn deadline(exp: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let until = Duration::from_secs(exp.saturating_add(LEEWAY_S + 1));
    Instant::now() + until.saturating_sub(now).min(LONGEST_VALIDITY)
}

/// How far ahead a token's deadline may be. Backends mint tokens whose
/// `exp` is centuries away to mean "never", and an `Instant` that far
/// ahead does not exist: adding it panicked (found by the `jwt` fuzz
/// target, with an `exp` of about 10^19). Thirty years is as good as
/// never for one stream, and as far as tokio's own "far future" goes.
const LONGEST_VALIDITY: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// A verified token.
#[derive(Debug)]
struct Token {
    subject: Option<String>,
    publish: PatternSet,
    subscribe: Arc<PatternSet>,
    admin: bool,
    deadline: Instant,
}

/// The hub's rules: its key, its private topics, and what is open without
/// a token.
pub struct Auth {
    verifier: Option<Verifier>,
    /// The algorithm named in the start-up log.
    algorithm: &'static str,
    cookie: String,
    /// With a key: the private topics of the configuration, and `$sys/**`.
    private: Arc<PatternSet>,
    require_subscribe_token: bool,
    allow_anonymous: bool,
}

impl Auth {
    /// The rules of `config`, with its key read (and checked) now.
    pub fn from_config(config: &Config) -> anyhow::Result<Auth> {
        let verifier = Verifier::from_config(config)?;
        let mut private = config.private_topics();
        if verifier.is_some() {
            private.push(SYS_TOPICS);
        }
        let private = PatternSet::parse(private)?;
        let algorithm = verifier.as_ref().map_or("", |(_, alg)| *alg);
        Ok(Auth {
            verifier: verifier.map(|(verifier, _)| verifier),
            algorithm,
            cookie: config.jwt_cookie.clone(),
            private: Arc::new(private),
            require_subscribe_token: config.require_subscribe_token,
            allow_anonymous: config.allow_anonymous_publish,
        })
    }

    /// Says in the log who may publish, once, at start.
    pub fn announce(&self) {
        match (&self.verifier, self.allow_anonymous) {
            (Some(_), _) => tracing::info!(
                algorithm = self.algorithm,
                require_subscribe_token = self.require_subscribe_token,
                "JWT key configured: publishing and the admin endpoints need a token that \
                 grants them; private topics need a subscribe grant"
            ),
            (None, false) => tracing::info!(
                "no JWT key configured: publishing and the admin endpoints are accepted from \
                 loopback addresses only (--jwt-secret or --jwt-public-key to take tokens, \
                 --allow-anonymous-publish to accept anyone)"
            ),
            (None, true) => tracing::warn!(
                "no JWT key configured and --allow-anonymous-publish: anyone who reaches this \
                 hub may publish and use the admin endpoints"
            ),
        }
    }

    /// The token of a request, if it carries one: the `Authorization`
    /// header's, else the query parameter's, else the cookie's.
    fn find_token(&self, parts: &Parts) -> Option<String> {
        let bearer = parts
            .headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(bearer_token);
        let query = || {
            form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
                .find(|(key, _)| key == QUERY_PARAMETER)
                .map(|(_, value)| value.into_owned())
        };
        let cookie = || {
            parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| cookie_value(v, &self.cookie))
        };
        bearer
            .map(String::from)
            .or_else(query)
            .or_else(|| cookie().map(String::from))
            .filter(|token| !token.is_empty())
    }
}

/// The token of an `Authorization: Bearer …` value.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// Whether `name` can be a cookie's name (an RFC 6265 token).
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn invalid_token(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Who sent a request: its verified token, if any, and its address. A
/// request with a token that does not verify is refused (`401
/// invalid_token`) before its handler runs, whatever it asks for.
pub struct Caller {
    auth: Arc<Auth>,
    token: Option<Token>,
    remote: Option<SocketAddr>,
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Caller, ApiError> {
        let auth = Arc::<Auth>::from_ref(state);
        let token = match &auth.verifier {
            Some(verifier) => auth
                .find_token(parts)
                .map(|token| verifier.verify(&token))
                .transpose()?,
            None => None,
        };
        Ok(Caller {
            remote: parts.extensions.get::<ConnInfo>().map(|c| c.remote),
            token,
            auth,
        })
    }
}

impl Caller {
    /// The token's subject (`sub`), if it has one.
    pub fn subject(&self) -> Option<&str> {
        self.token.as_ref()?.subject.as_deref()
    }

    /// A timer that fires when the caller's token stops being honoured:
    /// its stream ends then, and the client reconnects with a fresh token.
    pub fn expiry(&self) -> Expiry {
        Expiry(
            self.token
                .as_ref()
                .map(|t| Box::pin(tokio::time::sleep_until(t.deadline))),
        )
    }

    /// Without a key: whether requests from this address may do `what`.
    fn anonymous(&self, what: &str) -> Result<(), ApiError> {
        let loopback = self
            .remote
            .is_some_and(|a| a.ip().to_canonical().is_loopback());
        if loopback || self.auth.allow_anonymous {
            Ok(())
        } else {
            Err(forbidden(format!(
                "{what} is accepted from loopback addresses only: this hub has no JWT key \
                 (--jwt-secret, --jwt-public-key) and no --allow-anonymous-publish"
            )))
        }
    }

    /// Whether the caller may publish at all: checked before a body is
    /// read.
    pub fn may_publish(&self) -> Result<(), ApiError> {
        match (&self.auth.verifier, &self.token) {
            (None, _) => self.anonymous("publishing"),
            (Some(_), Some(_)) => Ok(()),
            (Some(_), None) => Err(unauthorized("publishing needs a token")),
        }
    }

    /// Whether the caller may publish to every one of `topics`.
    pub fn may_publish_to<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ApiError> {
        self.may_publish()?;
        let Some(token) = &self.token else {
            return Ok(());
        };
        match topics.into_iter().find(|t| !token.publish.matches(t)) {
            Some(topic) => Err(forbidden(format!(
                "the token does not grant publishing to {topic:?}"
            ))),
            None => Ok(()),
        }
    }

    /// Whether the caller may use the admin endpoints.
    pub fn may_administer(&self) -> Result<(), ApiError> {
        match (&self.auth.verifier, &self.token) {
            (None, _) => self.anonymous("the admin endpoints are"),
            (Some(_), Some(token)) if token.admin => Ok(()),
            (Some(_), Some(_)) => Err(forbidden("the token does not grant admin")),
            (Some(_), None) => Err(unauthorized("the admin endpoints need a token")),
        }
    }

    /// What the caller may read, or `None` when everything is public (no
    /// key). Refused without a token when every subscription needs one.
    pub fn read_access(&self) -> Result<Option<Access>, ApiError> {
        if self.auth.verifier.is_none() {
            return Ok(None);
        }
        let grants = match &self.token {
            Some(token) => token.subscribe.clone(),
            None if self.auth.require_subscribe_token => {
                return Err(unauthorized("subscribing needs a token on this hub"));
            }
            None => Arc::default(),
        };
        Ok(Some(Access::new(self.auth.private.clone(), grants)))
    }

    /// The filter of a subscription (or history read) listing `entries`,
    /// limited to what the caller may read: a private topic it names
    /// without a grant is refused; its wildcards skip such topics.
    pub fn filter<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a str>,
        max: usize,
    ) -> Result<TopicFilter, ApiError> {
        let access = self.read_access()?;
        let filter = TopicFilter::parse(entries, max)?;
        let Some(access) = access else {
            return Ok(filter);
        };
        filter.restrict(&access).map_err(|topic| {
            let message = format!("{topic:?} is a private topic");
            match self.token {
                Some(_) => forbidden(format!("{message} that the token does not grant")),
                None => unauthorized(format!("{message}: reading it needs a token")),
            }
        })
    }
}

/// A caller that may use the admin endpoints; others are refused.
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Admin, ApiError> {
        Caller::from_request_parts(parts, state)
            .await?
            .may_administer()?;
        Ok(Admin)
    }
}

/// When a caller's token stops being honoured, as a timer; never, without
/// a token.
pub struct Expiry(Option<Pin<Box<Sleep>>>);

impl Expiry {
    /// When the token expires, if it does.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.0.as_ref().map(|sleep| sleep.deadline())
    }

    /// Resolves when the token expires.
    pub async fn wait(&mut self) {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(claims: &serde_json::Value, secret: &str) -> String {
        let key = EncodingKey::from_secret(secret.as_bytes());
        jsonwebtoken::encode(&Header::default(), claims, &key).unwrap()
    }

    fn hs256() -> Verifier {
        use Algorithm::*;
        let key = DecodingKey::from_secret(SECRET.as_bytes());
        Verifier::new(key, &[HS256, HS384, HS512])
    }

    fn code(result: Result<Token, ApiError>) -> (&'static str, String) {
        let error = result.expect_err("refused");
        (error.code, error.message)
    }

    #[test]
    fn a_valid_token_carries_its_grants() {
        let claims = serde_json::json!({
            "sub": "alice", "exp": now() + 60,
            "sluice": {"publish": ["trades/*"], "subscribe": ["secret/**"], "admin": true, "x": 1},
        });
        let token = hs256().verify(&sign(&claims, SECRET)).unwrap();
        assert_eq!(token.subject.as_deref(), Some("alice"));
        assert!(token.publish.matches("trades/a") && !token.publish.matches("trades"));
        assert!(token.subscribe.matches("secret/x/y"));
        assert!(token.admin);
        let left = token.deadline - Instant::now();
        assert!(left > Duration::from_secs(65) && left <= Duration::from_secs(67));
        let bare = hs256()
            .verify(&sign(&serde_json::json!({"exp": now() + 60}), SECRET))
            .unwrap();
        assert!(!bare.admin && bare.publish.is_empty() && bare.subscribe.is_empty());
    }

    #[test]
    fn a_token_that_never_expires_is_held_for_thirty_years() {
        for exp in [
            u64::MAX,
            9_999_999_955_002_065_599,
            now() + 40 * 365 * 86_400,
        ] {
            let claims = serde_json::json!({"exp": exp, "sluice": {"publish": ["**"]}});
            let token = hs256().verify(&sign(&claims, SECRET)).unwrap();
            let left = token.deadline - Instant::now();
            assert!(
                left > LONGEST_VALIDITY - Duration::from_secs(60) && left <= LONGEST_VALIDITY,
                "exp {exp}: {left:?}"
            );
        }
    }

    #[test]
    fn times_are_checked_with_five_seconds_of_leeway() {
        let verify = |claims| hs256().verify(&sign(&claims, SECRET));
        let t = now();
        assert!(
            verify(serde_json::json!({"exp": t - 2})).is_ok(),
            "within leeway"
        );
        assert_eq!(
            code(verify(serde_json::json!({"exp": t - 10}))).0,
            "invalid_token"
        );
        assert!(verify(serde_json::json!({"exp": t + 60, "nbf": t + 2})).is_ok());
        let (_, message) = code(verify(serde_json::json!({"exp": t + 60, "nbf": t + 10})));
        assert!(message.contains("not valid yet"), "{message}");
        let (_, message) = code(verify(serde_json::json!({"sub": "x"})));
        assert!(message.contains("needs exp"), "{message}");
    }

    #[test]
    fn bad_tokens_are_refused_without_being_quoted() {
        let t = now() + 60;
        let wrong_key = sign(&serde_json::json!({"exp": t}), &SECRET.replace('0', "1"));
        let bad_grant = sign(
            &serde_json::json!({"exp": t, "sluice": {"publish": ["a/**/b"]}}),
            SECRET,
        );
        let bad_admin = sign(
            &serde_json::json!({"exp": t, "sluice": {"admin": "yes"}}),
            SECRET,
        );
        for token in [wrong_key, bad_grant, bad_admin, "a.b.c".into(), "x".into()] {
            let (code, message) = code(hs256().verify(&token));
            assert_eq!(code, "invalid_token");
            assert!(!message.contains(&token), "{message}");
        }
    }

    #[test]
    fn tokens_are_found_in_headers_queries_and_cookies() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(
            cookie_value("a=1; sluice_token=xyz; b=2", "sluice_token"),
            Some("xyz")
        );
        assert_eq!(
            cookie_value("sluice_token=\"xyz\"", "sluice_token"),
            Some("xyz")
        );
        assert_eq!(cookie_value("my_sluice_token=xyz", "sluice_token"), None);
        assert!(valid_cookie_name("sluice_token") && valid_cookie_name("__Host-t"));
        assert!(!valid_cookie_name("") && !valid_cookie_name("a b") && !valid_cookie_name("a=b"));
    }
}

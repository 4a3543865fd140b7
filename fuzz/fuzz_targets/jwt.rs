//! JWTs as requests carry them, verified with the hub's HS256 secret, then
//! asked what they grant. The first byte chooses: its low bit, a whole
//! token from the rest of the input, or a header and claims (the rest,
//! split at its first newline) that the target signs with the secret, so
//! that fuzzed claims reach the grant parsing behind the signature; its
//! next bits, where the token goes: `Authorization: Bearer`, the
//! `sluice_token` cookie, or the `access_token` query parameter.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};

use axum::extract::FromRequestParts;
use axum::http::{Request, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use sluice::auth::{Auth, Caller};
use sluice::config::{Config, Secret};

const SECRET: &str = "a fuzzing secret of at least 32 bytes";

static AUTH: LazyLock<Arc<Auth>> = LazyLock::new(|| {
    let config = Config {
        jwt_secret: Some(Secret(SECRET.into())),
        private_topics: "secret/**".into(),
        ..Config::default()
    };
    Arc::new(Auth::from_config(&config).expect("the fuzzing key is valid"))
});

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let token = if mode & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let at = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let (header, claims) = (&rest[..at], rest.get(at + 1..).unwrap_or_default());
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256)
            .expect("HS256 signs anything");
        format!("{message}.{signature}")
    };
    let request = match (mode >> 1) % 3 {
        0 => Request::builder().header(header::AUTHORIZATION, format!("Bearer {token}")),
        1 => Request::builder().header(header::COOKIE, format!("a=b; sluice_token={token}")),
        _ => {
            let query: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
            Request::builder().uri(format!("/stream?topics=a&access_token={query}"))
        }
    };
    let Ok(request) = request.body(()) else {
        return; // not a valid header value or URL: never reaches the hub
    };
    let (mut parts, ()) = request.into_parts();
    let mut verify = std::pin::pin!(Caller::from_request_parts(&mut parts, &*AUTH));
    let Poll::Ready(caller) = verify
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    else {
        panic!("verifying a token does not wait");
    };
    if let Ok(caller) = caller {
        let _ = caller.may_publish_to(["a/b", "secret/x"]);
        let _ = caller.may_administer();
        let _ = caller.filter(["**", "secret/*", "a"], 100);
    }
});

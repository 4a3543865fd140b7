//! `sluice token`: mints an HS256 token from the secret the hub is
//! configured with, for development and scripts.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};

use super::{Claims, Grants};
use crate::config::{Config, ServeArgs};
use crate::topic::Pattern;

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// Patterns the token may publish to, comma-separated or repeated.
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    pub publish: Vec<String>,
    /// Private patterns the token may read, comma-separated or repeated
    /// (public topics need no grant).
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    pub subscribe: Vec<String>,
    /// Grant the admin endpoints (/clients, /topics, /metrics).
    #[arg(long)]
    pub admin: bool,
    /// How long the token is valid, e.g. 1h, 30m, 7d.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The token's subject (`sub`), naming who holds it.
    #[arg(long, value_name = "NAME")]
    pub sub: Option<String>,
    /// The hub's secret [default: SLUICE_JWT_SECRET, or jwt_secret of --config].
    #[arg(long, value_name = "SECRET")]
    pub jwt_secret: Option<String>,
    /// The hub's TOML settings, to read jwt_secret from.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl TokenArgs {
    /// Prints the token on standard output.
    pub fn run(self) -> anyhow::Result<()> {
        let token = self.mint()?;
        writeln!(std::io::stdout(), "{token}")?;
        Ok(())
    }

    fn mint(self) -> anyhow::Result<String> {
        let config = Config::load(&ServeArgs {
            config: self.config,
            jwt_secret: self.jwt_secret,
            ..ServeArgs::default()
        })?;
        let Some(secret) = config.jwt_secret else {
            anyhow::bail!(
                "no secret to sign with: give --jwt-secret, set SLUICE_JWT_SECRET, or put \
                 jwt_secret in the file of --config"
            );
        };
        if self.ttl.is_zero() {
            anyhow::bail!("--ttl must be longer than zero");
        }
        for pattern in self.publish.iter().chain(&self.subscribe) {
            Pattern::parse(pattern)?;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            sub: self.sub,
            exp: now.saturating_add(self.ttl.as_secs()),
            iat: Some(now),
            sluice: Grants {
                publish: self.publish,
                subscribe: self.subscribe,
                admin: self.admin,
            },
        };
        let key = EncodingKey::from_secret(secret.0.as_bytes());
        Ok(jsonwebtoken::encode(&Header::default(), &claims, &key)?)
    }
}

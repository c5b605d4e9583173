//! `weirctl token create|list|revoke`: workload tokens for `Identity.Certify` (design §5).

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use weir_proto::admin::v1::{CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, TokenInfo};

use super::output::{self, MAX_WIDTH, Table};
use super::{ListFormat, Outcome, Target, Usage};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token for one identity, spiffe://<trust-domain>/ns/NS/sa/SA, and print it.
    ///
    /// Only the token goes to stdout (so `TOKEN=$(weirctl token create …)` works); its id and
    /// expiry go to stderr. The token is shown this once: the control plane keeps only its id.
    Create {
        #[arg(short, long)]
        namespace: String,
        #[arg(long, visible_alias = "sa")]
        service_account: String,
        /// How long the token is accepted, e.g. 8760h, 30m (at least 1s).
        #[arg(long, default_value = "8760h", value_parser = parse_ttl)]
        ttl: Duration,
        /// text (the token alone) or json ({"token", "id", "identity", "expires"}).
        #[arg(short, long, value_enum, default_value_t = CreateFormat::Text)]
        output: CreateFormat,
    },
    /// List tokens: id, identity, expiry and state (active, expired, revoked).
    List {
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
    /// Revoke a token by id: Certify refuses it from now on (certificates already issued stay
    /// valid until they expire, at most --cert-ttl).
    Revoke { id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CreateFormat {
    Text,
    Json,
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = weir_policy::duration::parse(text)?;
    if ttl < Duration::from_secs(1) {
        return Err(format!("token ttl {text:?} is under 1s"));
    }
    Ok(ttl)
}

pub async fn run(target: &Target, command: TokenCommand) -> Outcome {
    match command {
        TokenCommand::Create {
            namespace,
            service_account,
            ttl,
            output,
        } => create(target, namespace, service_account, ttl, output).await,
        TokenCommand::List { output } => list(target, output).await,
        TokenCommand::Revoke { id } => revoke(target, id).await,
    }
}

async fn create(
    target: &Target,
    namespace: String,
    service_account: String,
    ttl: Duration,
    format: CreateFormat,
) -> Outcome {
    let mut client = target.connect().await?;
    let response = client
        .create_token(CreateTokenRequest {
            namespace,
            service_account,
            // Rounded up so a sub-second remainder never shortens the lifetime asked for.
            ttl_seconds: ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0),
        })
        .await
        .map_err(|status| target.explain(&status))?
        .into_inner();
    let info = response.info.unwrap_or_default();
    match format {
        CreateFormat::Text => {
            output::emit(&format!("{}\n", response.token))?;
            eprintln!(
                "token {} for {} (expires {})",
                info.id,
                info.identity,
                output::timestamp(info.expires_unix_ms)
            );
        }
        CreateFormat::Json => output::emit(&output::pretty_json(&serde_json::json!({
            "token": response.token,
            "id": info.id,
            "identity": info.identity,
            "expires": output::timestamp(info.expires_unix_ms),
        }))?)?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(target: &Target, format: ListFormat) -> Outcome {
    let mut client = target.connect().await?;
    let tokens = client
        .list_tokens(ListTokensRequest {})
        .await
        .map_err(|status| target.explain(&status))?
        .into_inner()
        .tokens;
    let now = now_unix_ms();
    match format {
        ListFormat::Table | ListFormat::Wide if tokens.is_empty() => eprintln!("No tokens."),
        ListFormat::Table | ListFormat::Wide => output::emit(&table(&tokens, now))?,
        ListFormat::Json => output::emit(&json(&tokens, now)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(target: &Target, id: String) -> Outcome {
    if id.trim().is_empty() {
        return Err(Usage("token id is required (see `weirctl token list`)".into()).into());
    }
    let mut client = target.connect().await?;
    let info = client
        .revoke_token(RevokeTokenRequest { id })
        .await
        .map_err(|status| target.explain(&status))?
        .into_inner()
        .info
        .unwrap_or_default();
    output::emit(&format!("token {} ({}) revoked\n", info.id, info.identity))?;
    Ok(ExitCode::SUCCESS)
}

fn state(token: &TokenInfo, now_unix_ms: i64) -> &'static str {
    if token.revoked {
        "revoked"
    } else if token.expires_unix_ms <= now_unix_ms {
        "expired"
    } else {
        "active"
    }
}

fn table(tokens: &[TokenInfo], now_unix_ms: i64) -> String {
    let mut table = Table::new(&["ID", "IDENTITY", "EXPIRES", "STATE"]);
    for t in tokens {
        table.row([
            t.id.clone(),
            t.identity.clone(),
            output::timestamp(t.expires_unix_ms),
            state(t, now_unix_ms).to_string(),
        ]);
    }
    table.render(MAX_WIDTH)
}

fn json(tokens: &[TokenInfo], now_unix_ms: i64) -> anyhow::Result<String> {
    let items: Vec<_> = tokens
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": t.id,
                "identity": t.identity,
                "namespace": t.namespace,
                "serviceAccount": t.service_account,
                "created": output::timestamp(t.created_unix_ms),
                "expires": output::timestamp(t.expires_unix_ms),
                "revoked": t.revoked,
                "state": state(t, now_unix_ms),
            })
        })
        .collect();
    output::pretty_json(&items)
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, expires: i64, revoked: bool) -> TokenInfo {
        TokenInfo {
            id: id.into(),
            identity: "spiffe://weir.local/ns/shop/sa/orders".into(),
            expires_unix_ms: expires,
            revoked,
            ..Default::default()
        }
    }

    #[test]
    fn states_and_table() {
        let tokens = [
            info("a1", 2_000, false),
            info("b2", 500, false),
            info("c3", 2_000, true),
        ];
        let text = table(&tokens, 1_000);
        assert!(text.starts_with("ID  IDENTITY"), "{text}");
        let states: Vec<_> = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().last())
            .collect();
        assert_eq!(states, ["active", "expired", "revoked"]);
        let value: serde_json::Value =
            serde_json::from_str(&json(&tokens, 1_000).expect("json")).expect("parse");
        assert_eq!(value[2]["state"], "revoked");
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("8760h"), Ok(Duration::from_secs(8760 * 3600)));
        assert!(parse_ttl("500ms").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}

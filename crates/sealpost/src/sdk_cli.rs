//! `sealpost sdk …`: the client SDK from the command line, for people and for interoperability
//! checks. Everything is read from and written to files; key files are written with mode 0600;
//! a key or a plaintext reaches the terminal only when asked for with `-o -`.
//!
//! The platform is reached over HTTP (`--api <base URL>`, the API key from `SEALPOST_API_KEY`)
//! and/or NATS (`--nats <url>`). The directory's keys are pinned in `--trust` on first use.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sealpost_keyformat::LabelKey;
use sealpost_sdk::escrow::{EscrowKeyPair, EscrowPublicKey};
use sealpost_sdk::keyring::write_private;
use sealpost_sdk::{Device, HttpApi, KeyDirectory, Keyring, Outgoing, Platform, Sender, Trust};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// How to reach the platform.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    #[arg(long)]
    tenant: String,
    /// The HTTP API's base URL (uploads need it); the API key comes from SEALPOST_API_KEY.
    #[arg(long)]
    api: Option<String>,
    #[arg(long, env = "SEALPOST_API_KEY", hide_env_values = true, hide = true)]
    api_key: Option<String>,
    /// A NATS URL on the tenant's account (sends and key calls go over it when given).
    #[arg(long)]
    nats: Option<String>,
}

/// Where a sender keeps what it trusts and what it has seen.
#[derive(Debug, Clone, clap::Args)]
pub struct TrustArgs {
    /// The directory's pinned keys (JSON): written from `info` on first use, then trusted.
    #[arg(long)]
    trust: PathBuf,
    /// The last checkpoint this client verified: each lookup must extend it.
    #[arg(long)]
    state: PathBuf,
}

/// What a sender seals to.
#[derive(Debug, Clone, clap::Args)]
pub struct SealArgs {
    /// The recipient's phone number (E.164).
    #[arg(long)]
    recipient: String,
    /// The file holding the tenant's label key (64 hex digits).
    #[arg(long)]
    label_key_file: PathBuf,
    #[arg(long)]
    idempotency_key: String,
    /// The plaintext, or - for stdin.
    #[arg(long = "in")]
    input: PathBuf,
    /// The tenant's escrow public key file: the content key is also sealed to it.
    #[arg(long)]
    escrow: Option<PathBuf>,
}

/// The `sealpost sdk` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SdkCommand {
    /// A new device key file (mode 0600). Prints the key id, fingerprint and safety number.
    Keygen {
        #[arg(long)]
        tenant: String,
        /// The recipient's label (64 hex digits), as the tenant computes it.
        #[arg(long)]
        label: String,
        #[arg(long)]
        device: String,
        #[arg(long)]
        key_id: String,
        #[arg(long, default_value_t = 365)]
        valid_days: i64,
        #[arg(long)]
        out: PathBuf,
    },
    /// A new escrow key pair (mode 0600) and its public half for senders.
    EscrowKeygen {
        #[arg(long)]
        key_id: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        public_out: PathBuf,
    },
    /// Publish the device's current key; with --rotate, first rotate to a new key id (the old
    /// key keeps opening what was sealed to it until --retire-after-days).
    Publish {
        #[command(flatten)]
        conn: Connection,
        #[arg(long)]
        key_file: PathBuf,
        #[arg(long)]
        rotate: Option<String>,
        #[arg(long, default_value_t = 365)]
        valid_days: i64,
        #[arg(long, default_value_t = 30)]
        retire_after_days: i64,
    },
    /// Look the recipient up (verified) and seal the plaintext to its devices.
    Seal {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        seal: SealArgs,
        /// The envelope, or - for stdout.
        #[arg(short = 'o', long)]
        out: PathBuf,
    },
    /// Seal, upload and send. Prints the message id.
    Send {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        trust: TrustArgs,
        #[command(flatten)]
        seal: SealArgs,
        #[arg(long, default_value = "transactional")]
        message_type: String,
        #[arg(long)]
        ttl_seconds: Option<u32>,
    },
    /// Open an envelope with a device key file (or an escrow key pair, with --escrow).
    Open {
        #[arg(long)]
        key_file: PathBuf,
        /// The message id it was delivered under (a --link names it).
        #[arg(long, required_unless_present = "link")]
        message_id: Option<String>,
        /// The envelope file; or use --url or --link.
        #[arg(long = "in", conflicts_with_all = ["url", "link"], required_unless_present_any = ["url", "link"])]
        input: Option<PathBuf>,
        /// A payload link (a presigned GET): fetched without any API key.
        #[arg(long, conflicts_with = "link")]
        url: Option<String>,
        /// The message's device link (`.../v1/d/<tenant>/<message id>/<token>`): fetched
        /// without any API key, its digest checked; a payload that does not open is reported
        /// through it as `decryption_failed`.
        #[arg(long, conflicts_with = "escrow")]
        link: Option<String>,
        /// The payload's SHA-256 the message carried: checked before opening.
        #[arg(long)]
        sha256: Option<String>,
        /// Open as the tenant's escrow (key file: an escrow key pair).
        #[arg(long, requires_all = ["tenant", "label"])]
        escrow: bool,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        label: Option<String>,
        /// The plaintext, or - for stdout.
        #[arg(short = 'o', long)]
        out: PathBuf,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct PinnedTrust {
    directory: String,
    vrf_public_key: String,
    checkpoint_key: String,
}

async fn platform(conn: &Connection) -> anyhow::Result<Platform> {
    {
        let http = match &conn.api {
            Some(base) => {
                let key = conn
                    .api_key
                    .as_deref()
                    .context("--api needs the tenant's API key in SEALPOST_API_KEY")?;
                Some(HttpApi::new(base, key)?)
            }
            None => None,
        };
        let nats = match &conn.nats {
            Some(url) => Some(
                async_nats::connect(url)
                    .await
                    .with_context(|| format!("connecting to NATS at {url}"))?,
            ),
            None => None,
        };
        Ok(Platform::new(&conn.tenant, http, nats)?)
    }
}

async fn directory(conn: &Connection, t: &TrustArgs) -> anyhow::Result<KeyDirectory> {
    let platform = platform(conn).await?;
    let pinned: PinnedTrust = match std::fs::read(&t.trust) {
        Ok(text) => serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a trust file", t.trust.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let info = KeyDirectory::info(&platform).await?;
            let pinned = PinnedTrust {
                directory: info.directory,
                vrf_public_key: info.vrf_public_key,
                checkpoint_key: info.checkpoint_key,
            };
            write_private(&t.trust, &serde_json::to_vec_pretty(&pinned)?)?;
            eprintln!(
                "pinned directory '{}' (checkpoint key {}) in {} on first use",
                pinned.directory,
                pinned.checkpoint_key,
                t.trust.display()
            );
            pinned
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", t.trust.display())),
    };
    let trust = Trust::new(
        &pinned.directory,
        &pinned.vrf_public_key,
        &pinned.checkpoint_key,
    )?;
    Ok(KeyDirectory::open(platform, trust, Some(t.state.clone()))?)
}

async fn sender(conn: &Connection, t: &TrustArgs, s: &SealArgs) -> anyhow::Result<Sender> {
    let label_key = std::fs::read_to_string(&s.label_key_file)
        .with_context(|| format!("reading {}", s.label_key_file.display()))?;
    let label_key = LabelKey::from_hex(label_key.trim())
        .map_err(|e| anyhow::anyhow!("{}: {e}", s.label_key_file.display()))?;
    let escrow = match &s.escrow {
        Some(path) => Some(EscrowPublicKey::load(path)?.wrapper()?),
        None => None,
    };
    Ok(Sender::new(directory(conn, t).await?, label_key, escrow))
}

fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
        Ok(s)
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Writes to a file (mode 0600), or to stdout for `-`.
fn write_output(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)?;
        out.flush()?;
        Ok(())
    } else {
        Ok(write_private(path, bytes)?)
    }
}

fn days(n: i64) -> Duration {
    Duration::days(n)
}

/// Runs a `sealpost sdk` command.
pub async fn run(which: SdkCommand) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    match which {
        SdkCommand::Keygen {
            tenant,
            label,
            device,
            key_id,
            valid_days,
            out,
        } => {
            if out.exists() {
                anyhow::bail!(
                    "{} exists; keygen never overwrites a key file",
                    out.display()
                );
            }
            let ring = Keyring::generate(&tenant, &label, &device, &key_id, days(valid_days), now);
            ring.save(&out)?;
            print_key(&ring)?;
            Ok(())
        }
        SdkCommand::EscrowKeygen {
            key_id,
            out,
            public_out,
        } => {
            if out.exists() {
                anyhow::bail!(
                    "{} exists; keygen never overwrites a key file",
                    out.display()
                );
            }
            let pair = EscrowKeyPair::generate(&key_id);
            pair.save(&out)?;
            std::fs::write(&public_out, serde_json::to_vec_pretty(&pair.public())?)?;
            println!(
                "escrow key {key_id}: public half in {}",
                public_out.display()
            );
            Ok(())
        }
        SdkCommand::Publish {
            conn,
            key_file,
            rotate,
            valid_days,
            retire_after_days,
        } => {
            let mut device = Device::new(Keyring::load(&key_file)?);
            let request = match &rotate {
                Some(key_id) => {
                    let r =
                        device.rotate(key_id, days(valid_days), days(retire_after_days), now)?;
                    device.keyring.save(&key_file)?;
                    r
                }
                None => device.publish_request()?,
            };
            let p = platform(&conn).await?;
            let answer = p.keys("publish", &request).await?;
            let answer: sealpost_keys_client::api::CommandAnswer = serde_json::from_slice(&answer)?;
            println!(
                "published key {} of device {}: safety number {}",
                request.key_id,
                request.device_id,
                answer.safety_number.unwrap_or_default()
            );
            Ok(())
        }
        SdkCommand::Seal {
            conn,
            trust,
            seal,
            out,
        } => {
            let s = sender(&conn, &trust, &seal).await?;
            let plaintext = zeroize::Zeroizing::new(read_input(&seal.input)?);
            let sealed = s
                .seal(&seal.recipient, &seal.idempotency_key, &plaintext)
                .await?;
            write_output(&out, &sealed.envelope)?;
            eprintln!(
                "sealed for message {} to keys {}",
                sealed.binding.message_id,
                sealed.key_ids.join(", ")
            );
            Ok(())
        }
        SdkCommand::Send {
            conn,
            trust,
            seal,
            message_type,
            ttl_seconds,
        } => {
            let s = sender(&conn, &trust, &seal).await?;
            let plaintext = zeroize::Zeroizing::new(read_input(&seal.input)?);
            let sent = s
                .send(
                    &Outgoing {
                        recipient: seal.recipient.clone(),
                        idempotency_key: seal.idempotency_key.clone(),
                        message_type,
                        ttl_seconds,
                        correlation_id: None,
                        fallback: None,
                    },
                    &plaintext,
                )
                .await?;
            println!("{}", sent.message_id);
            Ok(())
        }
        SdkCommand::Open {
            key_file,
            message_id,
            input,
            url,
            link,
            sha256,
            escrow,
            tenant,
            label,
            out,
        } => {
            if let Some(link) = &link {
                let device = Device::new(Keyring::load(&key_file)?);
                let plaintext = device.receive(link, now).await?;
                write_output(&out, &plaintext)?;
                return Ok(());
            }
            let message_id = message_id.context("give --message-id")?;
            let sealed = match (&input, &url) {
                (Some(path), _) => read_input(path)?,
                (None, Some(url)) => sealpost_sdk::device::fetch(url).await?,
                (None, None) => anyhow::bail!("give --in, --url or --link"),
            };
            if let Some(digest) = &sha256 {
                let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&sealed));
                if &actual != digest {
                    anyhow::bail!(sealpost_sdk::OpenError::DigestMismatch);
                }
            }
            let plaintext = if escrow {
                let pair = EscrowKeyPair::load(&key_file)?;
                let expected = sealpost_sdk::Binding {
                    tenant: tenant.unwrap_or_default(),
                    message_id,
                    recipient_label: label.unwrap_or_default(),
                };
                let key = pair.unwrapper()?;
                sealpost_sdk::envelope::Envelope::parse(&sealed)?.open(
                    &sealpost_sdk::hpke::Hpke::default(),
                    &expected,
                    sealpost_sdk::envelope::SlotKind::Escrow,
                    &[key.as_ref()],
                )?
            } else {
                Device::new(Keyring::load(&key_file)?).open(&sealed, &message_id, now)?
            };
            write_output(&out, &plaintext)?;
            Ok(())
        }
    }
}

fn print_key(ring: &Keyring) -> anyhow::Result<()> {
    let key = ring.current().context("the key file has no current key")?;
    let fp = key.fingerprint()?;
    let fp_bytes: [u8; 32] = hex::decode(&fp)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("a fingerprint is 32 bytes"))?;
    println!(
        "device {} key {}: fingerprint {fp}, safety number {}",
        ring.device_id,
        key.key_id,
        sealpost_keyformat::safety_number(&fp_bytes)
    );
    Ok(())
}

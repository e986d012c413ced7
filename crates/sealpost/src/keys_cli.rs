//! `sealpost keys …`: a tenant directory's secrets, its API from the command line, and the
//! auditor's offline checks. Every answer is verified before anything of it is printed; a
//! failed check exits non-zero with what failed.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use sealpost_domain::TenantId;
use sealpost_eventstore::names::{KeysOp, KeysSubject};
use sealpost_keys::publisher::akd_label;
use sealpost_keys::service::{AuditAnswer, InfoAnswer, ProvenAnswer};
use sealpost_keys::{verify_history, verify_lookup, ClientState, DirectoryEntry};
use sealpost_tlog::{CheckpointVerifier, Hash, LogSigner};
use serde_json::json;

/// The `sealpost keys` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// New secrets for a tenant's directory, written as a `[tenants.keys]` table to --out (mode
    /// 0600); prints only the public halves.
    GenSecrets {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        out: PathBuf,
    },
    /// Publish a device key (or rotate: a new key id for the device): the publish request JSON
    /// from a file, or - for stdin.
    Publish {
        #[arg(long)]
        tenant: TenantId,
        file: PathBuf,
    },
    /// A recipient's keys, verified against the signed checkpoint (and, with --state, against
    /// the last checkpoint seen, which it then records).
    Lookup(ProvenArgs),
    /// A recipient's key history, verified the same way.
    History(ProvenArgs),
    /// Mark a key bad by fingerprint: listed in the tenant's bad-key list and revoked wherever
    /// the tenant's recipients published it. With --platform (the operator, with Sealpost's
    /// own config and credentials), in every configured tenant's directory.
    MarkBad {
        #[arg(
            long,
            required_unless_present = "platform",
            conflicts_with = "platform"
        )]
        tenant: Option<TenantId>,
        #[arg(long)]
        platform: bool,
        /// The key's fingerprint, 64 lowercase hex digits.
        #[arg(long)]
        fingerprint: String,
        /// 1 to 64 of [a-z0-9_], e.g. compromised.
        #[arg(long)]
        reason: String,
    },
    /// The tenant's bad-key list, verified whole against its signed checkpoint.
    BadKeys {
        #[arg(long)]
        tenant: TenantId,
    },
    /// The directory's signed checkpoint: the latest, or the one of --size epochs.
    Checkpoint {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        size: Option<u64>,
    },
    /// Verify a saved lookup or history answer offline, against the directory's public keys.
    Verify {
        /// The answer as `lookup` or `history --save` wrote it.
        #[arg(long)]
        answer: PathBuf,
        /// A history answer (default: a lookup answer).
        #[arg(long)]
        history: bool,
        #[arg(long)]
        directory: String,
        /// The recipient's label (64 hex digits).
        #[arg(long)]
        label: String,
        /// The directory's VRF public key (hex; `sealpost keys gen-secrets` and `info` print it).
        #[arg(long)]
        vrf_key: String,
        /// The checkpoint verifier key (`<origin>+<id>+<base64>`).
        #[arg(long)]
        checkpoint_key: String,
        /// The last checkpoint this client saw: the answer's must extend it.
        #[arg(long)]
        state: Option<PathBuf>,
        /// The consistency answer from the state's size to the answer's (`consistency` op).
        #[arg(long)]
        consistency: Option<PathBuf>,
    },
    /// Verify akd's append-only proofs and the checkpoints' consistency over epochs
    /// --from..--to, one epoch step at a time, with a progress bar.
    Audit {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Default: the checkpoint's last epoch.
        #[arg(long)]
        to: Option<u64>,
        /// The auditor's last checkpoint: the new one must extend it; it is then updated.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Save every answer (checkpoint, consistency, each step) in this directory.
        #[arg(long)]
        save: Option<PathBuf>,
        /// Verify the answers saved in this directory instead of asking the directory.
        #[arg(long, requires = "checkpoint_key")]
        offline: Option<PathBuf>,
        /// The checkpoint verifier key (offline; online it comes from `info`).
        #[arg(long)]
        checkpoint_key: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ProvenArgs {
    #[arg(long)]
    tenant: TenantId,
    /// The recipient's label (64 hex digits): HMAC-SHA256 of the number under the tenant's
    /// label key (docs/keys.md).
    #[arg(long)]
    label: String,
    /// A file holding the last checkpoint this client saw (created when missing).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Also save the answer here, for `sealpost keys verify`.
    #[arg(long)]
    save: Option<PathBuf>,
}

/// Runs a `sealpost keys` command.
pub async fn run(cfg: &crate::Config, which: KeysCommand) -> anyhow::Result<()> {
    match which {
        KeysCommand::GenSecrets { tenant, out } => gen_secrets(&tenant, &out).await,
        KeysCommand::Verify {
            answer,
            history,
            directory,
            label,
            vrf_key,
            checkpoint_key,
            state,
            consistency,
        } => {
            let text =
                std::fs::read(&answer).with_context(|| format!("reading {}", answer.display()))?;
            let vrf = hex::decode(vrf_key.trim()).context("--vrf-key must be hex")?;
            let key = CheckpointVerifier::new(&checkpoint_key)
                .context("--checkpoint-key is not a verifier key")?;
            let mut client = ClientState::default();
            if let Some(path) = &state {
                client.last = Some(read_checkpoint(&key, path)?);
            }
            let proof = match &consistency {
                Some(path) => {
                    let v: serde_json::Value = serde_json::from_slice(
                        &std::fs::read(path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    )?;
                    decode_hashes(&v["proof"])?
                }
                None => vec![],
            };
            let entries = verify_answer(
                &text,
                history,
                &directory,
                &label,
                &vrf,
                &key,
                &proof,
                &mut client,
            )?;
            print_entries(&entries);
            Ok(())
        }
        KeysCommand::Audit {
            tenant,
            from,
            to,
            state,
            save,
            offline,
            checkpoint_key,
        } => {
            let (source, key) = match offline {
                Some(dir) => (
                    Source::Offline(dir),
                    CheckpointVerifier::new(checkpoint_key.as_deref().unwrap_or_default())
                        .context("--checkpoint-key is not a verifier key")?,
                ),
                None => {
                    let client = crate::app::connect(cfg).await?;
                    let key =
                        CheckpointVerifier::new(&info(&client, &tenant).await?.checkpoint_key)?;
                    (Source::Online(client, tenant.clone()), key)
                }
            };
            audit(
                &source,
                &key,
                &tenant,
                from,
                to,
                state.as_deref(),
                save.as_deref(),
            )
            .await
        }
        KeysCommand::MarkBad {
            tenant: None,
            fingerprint,
            reason,
            ..
        } => {
            let fp: [u8; 32] = hex::decode(&fingerprint)
                .ok()
                .and_then(|b| b.try_into().ok())
                .context("--fingerprint must be 64 hex digits")?;
            let client = crate::app::connect(cfg).await?;
            let pool = crate::views::pool(cfg).await?;
            let service = sealpost_keys::service::KeysService::new(
                client,
                pool,
                crate::keys::directories(cfg)?,
                cfg.keys.cache_mb << 20,
            );
            let done = service
                .mark_bad_platform(fp, &reason)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for (tenant, answer) in done {
                println!(
                    "{tenant}: listed at index {}, {} key(s) revoked",
                    answer.index,
                    answer.revoked.len()
                );
            }
            Ok(())
        }
        other => {
            let client = crate::app::connect(cfg).await?;
            online(&client, other).await
        }
    }
}

async fn online(client: &async_nats::Client, which: KeysCommand) -> anyhow::Result<()> {
    match which {
        KeysCommand::Publish { tenant, file } => {
            let body = if file.as_os_str() == "-" {
                let mut s = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            };
            let answer = ask(client, &tenant, KeysOp::Publish, body).await?;
            println!("{answer}");
            Ok(())
        }
        KeysCommand::MarkBad {
            tenant: Some(tenant),
            fingerprint,
            reason,
            ..
        } => {
            let v = ask_json(
                client,
                &tenant,
                KeysOp::MarkBad,
                json!({"fingerprint": fingerprint, "reason": reason}),
            )
            .await?;
            println!("{v}");
            Ok(())
        }
        KeysCommand::BadKeys { tenant } => {
            let info = info(client, &tenant).await?;
            let key = CheckpointVerifier::new(&info.bad_keys_checkpoint_key)?;
            let v = ask_json(client, &tenant, KeysOp::BadKeys, json!({})).await?;
            let a: sealpost_keys::service::BadKeysAnswer = serde_json::from_value(v)?;
            let entries: Vec<Vec<u8>> = a.entries.iter().map(|e| e.clone().into_bytes()).collect();
            let list =
                sealpost_keys::badkeys::verify_bad_keys(&key, &entries, a.checkpoint.as_bytes())
                    .context("REFUSED")?;
            println!(
                "{} bad key(s), verified against the signed checkpoint",
                list.len()
            );
            for e in list {
                println!(
                    "  {} ({:?}): {} safety number {}",
                    hex::encode(e.fingerprint),
                    e.scope,
                    e.reason,
                    sealpost_keyformat::safety_number(&e.fingerprint)
                );
            }
            Ok(())
        }
        KeysCommand::Lookup(a) => proven(client, a, false).await,
        KeysCommand::History(a) => proven(client, a, true).await,
        KeysCommand::Checkpoint { tenant, size } => {
            let v = ask_json(client, &tenant, KeysOp::Checkpoint, json!({ "size": size })).await?;
            print!("{}", v["checkpoint"].as_str().unwrap_or_default());
            Ok(())
        }
        KeysCommand::GenSecrets { .. }
        | KeysCommand::Verify { .. }
        | KeysCommand::Audit { .. }
        | KeysCommand::MarkBad { tenant: None, .. } => Ok(()),
    }
}

async fn ask(
    client: &async_nats::Client,
    tenant: &TenantId,
    op: KeysOp,
    body: Vec<u8>,
) -> anyhow::Result<String> {
    let subject = KeysSubject::new(tenant.clone(), op).to_string();
    crate::client::request_subject(client, subject, body, "sealpost serve --roles keys").await
}

async fn ask_json(
    client: &async_nats::Client,
    tenant: &TenantId,
    op: KeysOp,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let text = ask(client, tenant, op, body.to_string().into_bytes()).await?;
    serde_json::from_str(&text).with_context(|| format!("the {op} answer is not JSON"))
}

async fn gen_secrets(tenant: &TenantId, out: &Path) -> anyhow::Result<()> {
    use rand_core::RngCore as _;
    use sealpost_keys::akd::ecvrf::VRFKeyStorage as _;
    let random = || -> anyhow::Result<[u8; 32]> {
        let mut b = [0u8; 32];
        rand_core::OsRng
            .try_fill_bytes(&mut b)
            .map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
        Ok(b)
    };
    let vrf_seed = random()?;
    let label_key = random()?;
    let (signer, _secret) = LogSigner::generate(&format!("sealpost/keys/{tenant}"))
        .context("generating the checkpoint signer")?;
    let vrf_public = sealpost_keys::VrfSecret::new(vrf_seed)
        .get_vrf_public_key()
        .await
        .map_err(|e| anyhow::anyhow!("deriving the VRF public key: {e:?}"))?;
    let table = format!(
        "# The key directory of tenant '{tenant}' (sealpost keys gen-secrets). Secret: keep it\n\
         # mode 0600 and paste it under the tenant's [[tenants]] entry.\n\
         [tenants.keys]\n\
         vrf_seed = \"{}\"\n\
         checkpoint_key = \"{}\"\n\
         # The tenant's SDK computes recipient labels with the same key.\n\
         label_key = \"{}\"\n",
        hex::encode(vrf_seed),
        signer.secret(),
        hex::encode(label_key)
    );
    write_secret(out, table.as_bytes())?;
    println!("wrote {} (mode 0600)", out.display());
    println!("vrf_public_key = {}", hex::encode(vrf_public.as_bytes()));
    println!("checkpoint_key = {}", signer.verifier_key());
    Ok(())
}

/// Writes a file only its owner can read, refusing to overwrite one.
fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

fn decode_hashes(v: &serde_json::Value) -> anyhow::Result<Vec<Hash>> {
    v.as_array()
        .context("a proof is a list of hashes")?
        .iter()
        .map(|h| {
            let b = base64::engine::general_purpose::STANDARD
                .decode(h.as_str().unwrap_or_default())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .context("a proof hash is not 32 bytes of base64")?;
            Ok(Hash(b))
        })
        .collect()
}

/// Verifies a saved answer and returns the entries it proves (one per version, newest first).
#[allow(clippy::too_many_arguments)]
fn verify_answer(
    text: &[u8],
    history: bool,
    directory: &str,
    label: &str,
    vrf: &[u8],
    key: &CheckpointVerifier,
    consistency: &[Hash],
    state: &mut ClientState,
) -> anyhow::Result<Vec<(u64, DirectoryEntry)>> {
    let label = akd_label(label).context("--label must be 64 hex digits")?;
    let values: Vec<(u64, sealpost_keys::akd::AkdValue)> = if history {
        let a: ProvenAnswer<sealpost_keys::akd::HistoryProof> =
            serde_json::from_slice(text).context("not a history answer")?;
        verify_history(
            vrf,
            key,
            directory,
            label,
            &a.into_proven()?,
            consistency,
            state,
        )
        .context("REFUSED")?
        .into_iter()
        .map(|r| (r.epoch, r.value))
        .collect()
    } else {
        let a: ProvenAnswer<sealpost_keys::akd::LookupProof> =
            serde_json::from_slice(text).context("not a lookup answer")?;
        let r = verify_lookup(
            vrf,
            key,
            directory,
            label,
            &a.into_proven()?,
            consistency,
            state,
        )
        .context("REFUSED")?;
        vec![(r.epoch, r.value)]
    };
    values
        .into_iter()
        .map(|(epoch, v)| {
            Ok((
                epoch,
                DirectoryEntry::from_value(&v)
                    .context("a proven value is not a directory entry")?,
            ))
        })
        .collect()
}

fn print_entries(entries: &[(u64, DirectoryEntry)]) {
    for (epoch, entry) in entries {
        println!("epoch {epoch}: verified");
        for k in &entry.keys {
            let fp: Option<[u8; 32]> = hex::decode(&k.fingerprint)
                .ok()
                .and_then(|b| b.try_into().ok());
            println!(
                "  device {} key {} ({:?}, expires {}) safety number {}",
                k.device_id,
                k.key_id,
                k.status,
                k.expires_at,
                fp.map(|f| sealpost_keyformat::safety_number(&f))
                    .unwrap_or_default()
            );
        }
    }
}

async fn info(client: &async_nats::Client, tenant: &TenantId) -> anyhow::Result<InfoAnswer> {
    Ok(serde_json::from_value(
        ask_json(client, tenant, KeysOp::Info, json!({})).await?,
    )?)
}

async fn proven(client: &async_nats::Client, a: ProvenArgs, history: bool) -> anyhow::Result<()> {
    let info = info(client, &a.tenant).await?;
    let key = CheckpointVerifier::new(&info.checkpoint_key)?;
    let vrf = hex::decode(&info.vrf_public_key)?;
    let mut state = ClientState::default();
    if let Some(path) = &a.state {
        if let Ok(text) = std::fs::read(path) {
            state.last = Some(key.open(&text).with_context(|| {
                format!(
                    "{} does not hold a checkpoint of this directory",
                    path.display()
                )
            })?);
        }
    }
    let op = if history {
        KeysOp::History
    } else {
        KeysOp::Lookup
    };
    let text = ask(
        client,
        &a.tenant,
        op,
        json!({ "recipient_label": a.label })
            .to_string()
            .into_bytes(),
    )
    .await?;
    let answer: serde_json::Value = serde_json::from_str(&text)?;
    let new_size = key
        .open(answer["checkpoint"].as_str().unwrap_or_default().as_bytes())
        .context("REFUSED: the checkpoint's signature")?
        .size;
    let consistency = match &state.last {
        Some(last) if last.size > 0 && last.size < new_size => {
            let v = ask_json(
                client,
                &a.tenant,
                KeysOp::Consistency,
                json!({"from": last.size, "to": new_size}),
            )
            .await?;
            decode_hashes(&v["proof"])?
        }
        _ => vec![],
    };
    let entries = verify_answer(
        text.as_bytes(),
        history,
        a.tenant.as_str(),
        &a.label,
        &vrf,
        &key,
        &consistency,
        &mut state,
    )?;
    if let Some(path) = &a.state {
        let cp = answer["checkpoint"].as_str().unwrap_or_default();
        std::fs::write(path, cp).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.save {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    print_entries(&entries);
    Ok(())
}

/// Reads a checkpoint file and checks its signature.
fn read_checkpoint(
    key: &CheckpointVerifier,
    path: &Path,
) -> anyhow::Result<sealpost_tlog::Checkpoint> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    key.open(&text).with_context(|| {
        format!(
            "{} does not hold a checkpoint of this directory",
            path.display()
        )
    })
}

/// Where an audit's answers come from: the live directory, or a directory of saved answers.
enum Source {
    Online(async_nats::Client, TenantId),
    Offline(PathBuf),
}

impl Source {
    /// The answer named `name` (`checkpoint`, `consistency`, `audit-<e>`); `request` is what
    /// the live directory is asked.
    async fn get(
        &self,
        name: &str,
        op: KeysOp,
        request: serde_json::Value,
    ) -> anyhow::Result<String> {
        match self {
            Source::Online(client, tenant) => {
                ask(client, tenant, op, request.to_string().into_bytes()).await
            }
            Source::Offline(dir) => {
                let path = dir.join(format!("{name}.json"));
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))
            }
        }
    }
}

async fn audit(
    source: &Source,
    key: &CheckpointVerifier,
    tenant: &TenantId,
    from: u64,
    to: Option<u64>,
    state: Option<&Path>,
    save: Option<&Path>,
) -> anyhow::Result<()> {
    let keep = |name: &str, text: &str| -> anyhow::Result<()> {
        if let Some(dir) = save {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join(format!("{name}.json")), text)?;
        }
        Ok(())
    };
    // One checkpoint for the whole audit: every step is proven in it.
    let text = source
        .get("checkpoint", KeysOp::Checkpoint, json!({}))
        .await?;
    keep("checkpoint", &text)?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let cp_text = v["checkpoint"].as_str().unwrap_or_default().to_owned();
    let cp = key
        .open(cp_text.as_bytes())
        .context("REFUSED: the checkpoint's signature does not verify")?;
    let mut broken = Vec::new();
    // The auditor's memory: the new checkpoint must extend the last one it saw.
    if let Some(path) = state.filter(|p| p.exists()) {
        let last = read_checkpoint(key, path)?;
        if last.size > cp.size {
            broken.push(format!(
                "the checkpoint (size {}) is older than one already seen (size {})",
                cp.size, last.size
            ));
        } else if last.size == cp.size {
            if last.root != cp.root {
                broken.push(format!(
                    "a split view: two checkpoints of size {} with different roots",
                    cp.size
                ));
            }
        } else {
            let text = source
                .get(
                    "consistency",
                    KeysOp::Consistency,
                    json!({"from": last.size, "to": cp.size}),
                )
                .await?;
            keep("consistency", &text)?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            if let Err(e) = sealpost_tlog::verify_consistency(
                &decode_hashes(&v["proof"])?,
                last.size,
                last.root,
                cp.size,
                cp.root,
            ) {
                broken.push(format!(
                    "a split view: the checkpoint of size {} does not extend the one of size {} seen before ({e})",
                    cp.size, last.size
                ));
            }
        }
    }
    let to = to.unwrap_or(cp.size);
    anyhow::ensure!(
        from >= 1 && from < to && to <= cp.size,
        "audit needs 1 <= --from < --to <= {} (the checkpoint's last epoch)",
        cp.size
    );
    let bar = indicatif::ProgressBar::new(to - from);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} epoch steps ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for e in from..to {
        let step = async {
            let text = source
                .get(
                    &format!("audit-{e}"),
                    KeysOp::Audit,
                    json!({"from": e, "to": e + 1, "size": cp.size}),
                )
                .await?;
            keep(&format!("audit-{e}"), &text)?;
            let a: AuditAnswer = serde_json::from_str(&text)?;
            let step_cp = a.verify(key, tenant.as_str()).await?;
            anyhow::ensure!(
                step_cp.size == cp.size && step_cp.root == cp.root,
                "a split view: the step is proven in another checkpoint (size {}) than the audit's (size {})",
                step_cp.size,
                cp.size
            );
            anyhow::Ok(())
        };
        if let Err(err) = step.await {
            broken.push(format!("epoch {e} -> {}: {err:#}", e + 1));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if broken.is_empty() {
        if let Some(path) = state {
            std::fs::write(path, &cp_text)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        println!(
            "audit of epochs {from}..{to} of '{tenant}' in the checkpoint of size {}: every append-only proof and the checkpoint verified",
            cp.size
        );
        Ok(())
    } else {
        for b in &broken {
            eprintln!("BROKEN {b}");
        }
        anyhow::bail!(
            "the audit of '{tenant}' found {} break(s); see above",
            broken.len()
        )
    }
}

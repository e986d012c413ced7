//! The NATS accounts of a Sealpost deployment, as a nats-server `accounts {}` block
//! (`sealpost tenants nats-config`).
//!
//! **Accounts are the tenant boundary.** Sealpost's processes live in the account `SEALPOST`,
//! which holds every stream. Each tenant with an nkey gets an account of its own,
//! `TENANT_<tenant>`, whose subject space and JetStream are separate: nothing a tenant does there
//! can name, read or touch another tenant's or the service's subjects, streams or consumers.
//! The accounts cross only where this block says, and each crossing is exported to that one
//! tenant (`accounts: [TENANT_<tenant>]`):
//!
//! - **commands and queries** (service exports): `sealpost.cmd.<tenant>.>` and
//!   `sealpost.qry.<tenant>.>`, imported under the same names. Another tenant's subjects do not
//!   exist in the account: a request to them finds no responder. Replies cross back through the
//!   import, so they never appear on a subject another account can see;
//! - **per-tenant notices and alerts** (stream exports): in-app notices
//!   (`sealpost.notice.<tenant>.>`) and key-change alerts (`sealpost.keys.<tenant>.>`), from
//!   [`TenantAccount::published_to_tenant`], so a subject family added there reaches its tenant
//!   and no other;
//! - **the tenant's own events**: `sealpost provision` creates the durable push consumer
//!   `tenant_<tenant>` on `SEALPOST_EVENTS`, filtered on `sealpost.evt.<tenant>.>` and delivering
//!   to `sealpost.deliver.<tenant>.events`. The tenant's account imports only that delivery
//!   subject, the reset of that one consumer (under `sealpost.service.api`) and its flow-control
//!   replies, so a stream in its account can source from it and nothing else: the tenant cannot
//!   create, read, inspect or delete any consumer in the service account. `sealpost replay
//!   --tenant` creates that stream (`SEALPOST_EVENTS` in the tenant's account) and replays from it.

use sealpost_domain::TenantId;
use sealpost_eventstore::names::{TenantAccount, SERVICE_ACCOUNT};

use crate::tenants::TenantConfig;

/// One export in the service account and its import in the tenant's.
struct Crossing {
    /// `service` or `stream`.
    kind: &'static str,
    subject: String,
    /// The import's local subject, when it differs (`to`).
    local: Option<String>,
}

fn crossings(t: &TenantAccount) -> Vec<Crossing> {
    let plain = |kind, subject: String| Crossing {
        kind,
        subject,
        local: None,
    };
    let mut out: Vec<Crossing> = t
        .served_to_tenant()
        .into_iter()
        .map(|s| plain("service", s))
        .collect();
    out.extend(
        t.published_to_tenant()
            .into_iter()
            .map(|s| plain("stream", s)),
    );
    out.push(plain("stream", t.deliver_subject()));
    let [reset, flow_control] = t.source_api();
    out.push(Crossing {
        kind: "service",
        local: Some(reset.replacen("$JS.API", TenantAccount::SERVICE_API, 1)),
        subject: reset,
    });
    out.push(plain("service", flow_control));
    out
}

/// The tenants that get a NATS account: those with a token-safe id and an nkey, with the nkey.
pub fn tenant_accounts(tenants: &[TenantConfig]) -> Vec<(TenantAccount, &str)> {
    let mut out: Vec<(TenantAccount, &str)> = tenants
        .iter()
        .filter_map(|t| {
            let id = TenantId::new(t.id.as_str()).ok()?;
            Some((TenantAccount::new(id), t.nats_nkey.as_deref()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.tenant.cmp(&b.0.tenant));
    out
}

/// The `accounts {}` block: the service account with `service_nkey` as its user, and one account
/// per tenant that has an nkey. Tenants without one are listed in a comment (they can still use
/// the HTTP API). Include the output from the server config; regenerate it and reload the server
/// (`nats-server --signal reload`) when a tenant is added, and run `sealpost provision` so its
/// source consumer exists.
pub fn nats_config(tenants: &[TenantConfig], service_nkey: &str) -> String {
    let mut exports = String::new();
    let mut accounts = String::new();
    let mut notes = String::new();
    let with_account = tenant_accounts(tenants);
    for t in tenants {
        if !with_account.iter().any(|(a, _)| a.tenant.as_str() == t.id) {
            notes.push_str(&format!(
                "  # tenant {} has no nats_nkey (or no token-safe id): no NATS account\n",
                t.id
            ));
        }
    }
    for (ta, nkey) in with_account {
        let account = ta.account();
        let mut imports = String::new();
        exports.push_str(&format!("      # tenant {}\n", ta.tenant));
        for c in crossings(&ta) {
            exports.push_str(&format!(
                "      {{ {kind}: \"{subject}\", accounts: [{account}] }}\n",
                kind = c.kind,
                subject = c.subject,
            ));
            let to = c
                .local
                .map(|l| format!(", to: \"{l}\""))
                .unwrap_or_default();
            imports.push_str(&format!(
                "      {{ {kind}: {{ account: {SERVICE_ACCOUNT}, subject: \"{subject}\" }}{to} }}\n",
                kind = c.kind,
                subject = c.subject,
            ));
        }
        accounts.push_str(&format!(
            "  # tenant {tenant}: its own subjects and JetStream\n  {account} {{\n    jetstream: enabled\n    users: [ {{ nkey: \"{nkey}\" }} ]\n    imports: [\n{imports}    ]\n  }}\n",
            tenant = ta.tenant,
        ));
    }
    format!(
        "# Generated by `sealpost tenants nats-config`; include it from the server config.\n\
         # One NATS account per tenant; see crates/sealpost-gateway/src/accounts.rs.\n\
         accounts {{\n\
         {notes}  # Sealpost's processes (gateway, workers, projectors): every stream lives here.\n  \
         {SERVICE_ACCOUNT} {{\n    jetstream: enabled\n    users: [ {{ nkey: \"{service_nkey}\" }} ]\n    \
         exports: [\n{exports}    ]\n  }}\n{accounts}}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str, nkey: Option<&str>) -> TenantConfig {
        TenantConfig {
            id: id.into(),
            api_key_sha256: vec![],
            nats_nkey: nkey.map(str::to_owned),
            rate_per_sec: 1.0,
            burst: 1,
            daily_quota: None,
            keys: None,
            trace_sample_ratio: None,
        }
    }

    #[test]
    fn each_tenant_gets_an_account_that_imports_only_its_own_subjects() {
        let text = nats_config(
            &[
                tenant("beta", Some("UBETA")),
                tenant("acme", Some("UACME")),
                tenant("gamma", None),
            ],
            "USERVICE",
        );
        assert!(text.contains("SEALPOST {"), "{text}");
        assert!(text.contains("TENANT_acme {") && text.contains("TENANT_beta {"));
        assert!(text.contains("tenant gamma has no nats_nkey"));
        assert!(!text.contains("TENANT_gamma"));
        // Every export names exactly one tenant's subjects and that tenant's account.
        for line in text.lines().filter(|l| l.contains("accounts: [")) {
            let tenant = if line.contains(".acme.") || line.contains("tenant_acme") {
                "acme"
            } else {
                "beta"
            };
            assert!(
                line.contains(&format!("accounts: [TENANT_{tenant}]")),
                "{line}"
            );
        }
        // acme's account imports acme's subjects and nothing of beta's.
        let acme = &text
            [text.find("TENANT_acme {").unwrap()..text.find("# tenant beta: its own").unwrap()];
        for s in [
            "sealpost.cmd.acme.>",
            "sealpost.qry.acme.>",
            "sealpost.keys.acme.>",
            "sealpost.notice.acme.>",
            "sealpost.deliver.acme.events",
            "$JS.API.CONSUMER.RESET.SEALPOST_EVENTS.tenant_acme",
        ] {
            assert!(acme.contains(s), "{s} not imported:\n{acme}");
        }
        assert!(!acme.contains("beta"), "{acme}");
        // No JetStream API of the service account beyond the one reset.
        assert_eq!(text.matches("$JS.API.").count(), 4, "{text}");
        assert_eq!(text.matches("$JS.FC.").count(), 4, "{text}");
    }
}

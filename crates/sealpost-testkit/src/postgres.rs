//! A private Postgres database per test, cloned from a template that has every migration of
//! `migrations/` applied (made once per migration set, shared by all tests and test processes).
//!
//! The server is `DATABASE_URL` (its database is used for admin statements only), else the local
//! server at `postgres://postgres@127.0.0.1:5432/postgres` that `scripts/lib.sh`'s
//! `ensure_postgres` finds or starts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use sqlx::{Connection as _, Executor as _, PgConnection};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The server's admin URL: `DATABASE_URL`, else the local default.
pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned())
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // The path starts at the first '/' after "scheme://authority".
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// FNV-1a over the migration files' names and contents: the template's identity.
fn migrations_fingerprint(dir: &std::path::Path) -> anyhow::Result<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        let mut bytes = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .into_bytes();
        bytes.extend(std::fs::read(&f)?);
        for b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{h:016x}"))
}

async fn admin(url: &str) -> anyhow::Result<PgConnection> {
    PgConnection::connect(url).await.with_context(|| {
        format!(
            "connecting to PostgreSQL at {url}: start it (scripts/test does, via scripts/lib.sh \
             ensure_postgres) or set DATABASE_URL"
        )
    })
}

/// Makes the migrated template once (under an advisory lock, so concurrent test processes agree)
/// and returns its name.
async fn ensure_template(admin_url: &str) -> anyhow::Result<String> {
    let dir = crate::workspace_root().join("migrations");
    let name = format!("sealpost_tpl_{}", migrations_fingerprint(&dir)?);
    let mut conn = admin(admin_url).await?;
    conn.execute("SELECT pg_advisory_lock(7362551)").await?;
    let result = async {
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(&name)
                .fetch_optional(&mut conn)
                .await?;
        if exists.is_none() {
            let tmp = format!("{name}_build");
            conn.execute(format!("DROP DATABASE IF EXISTS {tmp} WITH (FORCE)").as_str())
                .await?;
            conn.execute(format!("CREATE DATABASE {tmp}").as_str())
                .await?;
            {
                let mut db = admin(&with_database(admin_url, &tmp)).await?;
                sqlx::migrate::Migrator::new(dir.as_path())
                    .await
                    .context("reading migrations/")?
                    .run(&mut db)
                    .await
                    .context("migrating the template database")?;
                db.close().await?;
            }
            conn.execute(format!("ALTER DATABASE {tmp} RENAME TO {name}").as_str())
                .await?;
        }
        anyhow::Ok(())
    }
    .await;
    let _ = conn.execute("SELECT pg_advisory_unlock(7362551)").await;
    result?;
    Ok(name)
}

/// A database of this test alone, with every migration applied. Dropped (`WITH (FORCE)`) when
/// this value drops.
#[derive(Debug)]
pub struct PgDatabase {
    /// Connect here.
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl PgDatabase {
    /// Clones a fresh database from the migrated template.
    pub async fn create() -> anyhow::Result<PgDatabase> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let admin_url = postgres_admin_url();
        let template = ensure_template(&admin_url).await?;
        let name = format!(
            "sealpost_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let mut conn = admin(&admin_url).await?;
        let mut tries = 0;
        loop {
            let r = conn
                .execute(format!("CREATE DATABASE {name} TEMPLATE {template}").as_str())
                .await;
            match r {
                Ok(_) => break,
                // "source database is being accessed by other users": another clone is copying.
                Err(e) if tries < 50 && e.to_string().contains("being accessed") => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("cloning the template database"),
            }
        }
        let _ = conn.close().await;
        Ok(PgDatabase {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop is synchronous: drop the database from a thread with its own runtime.
        let done = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&admin_url).await {
                    let _ = c
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                    let _ = c.close().await;
                }
            });
        });
        let _ = done.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "t3"),
            "postgres://h:5432/t3"
        );
    }
}

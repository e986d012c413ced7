//! akd's [`Database`] on Postgres: one directory per tenant (the `directory` column), tree nodes
//! and the azks record in `akd_records` by akd's binary record id, value states in `akd_values`
//! by (label, epoch). Records are stored as akd's own serde form (JSON).
//!
//! akd calls [`Database::batch_set`] once per epoch commit with every record the epoch changed;
//! it is one Postgres transaction, so an epoch is stored whole or not at all.

use std::collections::HashMap;

use akd::errors::StorageError;
use akd::storage::types::{
    DbRecord, KeyData, StorageType, ValueState, ValueStateKey, ValueStateRetrievalFlag,
};
use akd::storage::{Database, DbSetState, Storable};
use akd::{AkdLabel, AkdValue};
use async_trait::async_trait;
use sqlx::PgPool;

/// The AKD storage of one directory.
#[derive(Debug, Clone)]
pub struct PgAkdStorage {
    pool: PgPool,
    directory: String,
    /// Whether an epoch commit is fenced (see [`PgAkdStorage::new`]).
    fenced: bool,
}

impl PgAkdStorage {
    /// The storage of `directory` (for example the tenant id) in `pool`, whose database has the
    /// migrations of `migrations/` applied. Epoch commits are fenced: a batch that writes the
    /// azks record of epoch `e >= 1` is committed only while the stored tree is at an earlier
    /// epoch, so two writers can never both commit epoch `e`.
    pub fn new(pool: PgPool, directory: impl Into<String>) -> Self {
        Self {
            pool,
            directory: directory.into(),
            fenced: true,
        }
    }

    /// Without the epoch fence: akd's plain `Database` contract, where any record may be
    /// overwritten (akd's own storage conformance tests write azks records out of order).
    pub fn unfenced(pool: PgPool, directory: impl Into<String>) -> Self {
        Self {
            fenced: false,
            ..Self::new(pool, directory)
        }
    }

    pub fn directory(&self) -> &str {
        &self.directory
    }
}

fn db_error(e: sqlx::Error) -> StorageError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            StorageError::Connection(e.to_string())
        }
        other => StorageError::Other(other.to_string()),
    }
}

fn encode(record: &DbRecord) -> Result<String, StorageError> {
    serde_json::to_string(record).map_err(|e| StorageError::Other(format!("encoding: {e}")))
}

fn decode(text: &str) -> Result<DbRecord, StorageError> {
    serde_json::from_str(text).map_err(|e| StorageError::Other(format!("decoding: {e}")))
}

fn decode_state(text: &str) -> Result<ValueState, StorageError> {
    match decode(text)? {
        DbRecord::ValueState(s) => Ok(s),
        other => Err(StorageError::Other(format!(
            "akd_values holds a {:?} record",
            std::mem::discriminant(&other)
        ))),
    }
}

fn i64_of(n: u64) -> Result<i64, StorageError> {
    i64::try_from(n).map_err(|_| StorageError::Other(format!("{n} does not fit a bigint")))
}

/// The `WHERE` and `ORDER BY` of a value-state lookup.
fn state_filter(
    flag: ValueStateRetrievalFlag,
) -> Result<(&'static str, i64, &'static str), StorageError> {
    use ValueStateRetrievalFlag as F;
    Ok(match flag {
        F::SpecificVersion(v) => ("version = $3", i64_of(v)?, "epoch DESC"),
        F::SpecificEpoch(e) => ("epoch = $3", i64_of(e)?, "epoch DESC"),
        F::LeqEpoch(e) => ("epoch <= $3", i64_of(e)?, "epoch DESC"),
        F::MaxEpoch => ("$3 = $3", 0, "epoch DESC"),
        F::MinEpoch => ("$3 = $3", 0, "epoch ASC"),
    })
}

impl PgAkdStorage {
    /// The epoch fence: a commit of epoch `epoch` (`epoch >= 1`) goes through only while the
    /// stored tree is at an earlier epoch. The azks row is locked for the transaction, so of two
    /// writers that both built epoch `epoch` on the same tree, the second finds it committed and
    /// fails, and nothing of its epoch is stored. (akd's own writer assumes it is alone.)
    async fn fence(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        epoch: u64,
    ) -> Result<(), StorageError> {
        if epoch == 0 {
            return Ok(());
        }
        let id = DbRecord::Azks(akd::append_only_zks::Azks {
            latest_epoch: 0,
            num_nodes: 0,
        })
        .get_full_binary_id();
        let stored: Option<String> = sqlx::query_scalar(
            "SELECT record::text FROM akd_records WHERE directory = $1 AND id = $2 FOR UPDATE",
        )
        .bind(&self.directory)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db_error)?;
        let stored_epoch = match stored.as_deref().map(decode).transpose()? {
            Some(DbRecord::Azks(a)) => a.latest_epoch,
            _ => 0,
        };
        if stored_epoch >= epoch {
            return Err(StorageError::Transaction(format!(
                "directory {}: epoch {epoch} is already committed (the tree is at epoch \
                 {stored_epoch}); another publisher got there first, so reopen the directory",
                self.directory
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Database for PgAkdStorage {
    async fn set(&self, record: DbRecord) -> Result<(), StorageError> {
        self.batch_set(vec![record], DbSetState::General).await
    }

    async fn batch_set(
        &self,
        records: Vec<DbRecord>,
        _state: DbSetState,
    ) -> Result<(), StorageError> {
        // Within one batch the last record of an id wins (an upsert cannot touch a row twice).
        let mut nodes: HashMap<Vec<u8>, String> = HashMap::new();
        let mut values: HashMap<(Vec<u8>, i64), (i64, String)> = HashMap::new();
        let mut azks_epoch = None;
        for r in &records {
            if let DbRecord::Azks(azks) = r {
                azks_epoch = Some(azks.latest_epoch);
            }
            match r {
                DbRecord::ValueState(s) => {
                    values.insert(
                        (s.username.to_vec(), i64_of(s.epoch)?),
                        (i64_of(s.version)?, encode(r)?),
                    );
                }
                _ => {
                    nodes.insert(r.get_full_binary_id(), encode(r)?);
                }
            }
        }
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        if let (true, Some(epoch)) = (self.fenced, azks_epoch) {
            self.fence(&mut tx, epoch).await?;
        }
        if !nodes.is_empty() {
            let (ids, recs): (Vec<Vec<u8>>, Vec<String>) = nodes.into_iter().unzip();
            sqlx::query(
                "INSERT INTO akd_records (directory, id, record) \
                 SELECT $1, i, r::jsonb FROM unnest($2::bytea[], $3::text[]) AS t(i, r) \
                 ON CONFLICT (directory, id) DO UPDATE SET record = EXCLUDED.record",
            )
            .bind(&self.directory)
            .bind(ids)
            .bind(recs)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        if !values.is_empty() {
            let mut labels = Vec::with_capacity(values.len());
            let mut epochs = Vec::with_capacity(values.len());
            let mut versions = Vec::with_capacity(values.len());
            let mut recs = Vec::with_capacity(values.len());
            for ((label, epoch), (version, rec)) in values {
                labels.push(label);
                epochs.push(epoch);
                versions.push(version);
                recs.push(rec);
            }
            sqlx::query(
                "INSERT INTO akd_values (directory, label, epoch, version, record) \
                 SELECT $1, l, e, v, r::jsonb \
                 FROM unnest($2::bytea[], $3::int8[], $4::int8[], $5::text[]) AS t(l, e, v, r) \
                 ON CONFLICT (directory, label, epoch) \
                 DO UPDATE SET version = EXCLUDED.version, record = EXCLUDED.record",
            )
            .bind(&self.directory)
            .bind(labels)
            .bind(epochs)
            .bind(versions)
            .bind(recs)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)
    }

    async fn get<St: Storable>(&self, id: &St::StorageKey) -> Result<DbRecord, StorageError> {
        let mut found = self.batch_get::<St>(std::slice::from_ref(id)).await?;
        match found.pop() {
            Some(r) => Ok(r),
            None => Err(StorageError::NotFound(format!(
                "{:?} {id:?} in directory {}",
                St::data_type(),
                self.directory
            ))),
        }
    }

    async fn batch_get<St: Storable>(
        &self,
        ids: &[St::StorageKey],
    ) -> Result<Vec<DbRecord>, StorageError> {
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let texts: Vec<String> = if St::data_type() == StorageType::ValueState {
            let mut labels = Vec::with_capacity(ids.len());
            let mut epochs = Vec::with_capacity(ids.len());
            for id in ids {
                let ValueStateKey(label, epoch) =
                    ValueState::key_from_full_binary(&St::get_full_binary_key_id(id))
                        .map_err(StorageError::Other)?;
                labels.push(label);
                epochs.push(i64_of(epoch)?);
            }
            sqlx::query_scalar(
                "SELECT v.record::text FROM akd_values v \
                 JOIN unnest($2::bytea[], $3::int8[]) AS k(l, e) ON v.label = k.l AND v.epoch = k.e \
                 WHERE v.directory = $1",
            )
            .bind(&self.directory)
            .bind(labels)
            .bind(epochs)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?
        } else {
            let bin: Vec<Vec<u8>> = ids.iter().map(St::get_full_binary_key_id).collect();
            sqlx::query_scalar(
                "SELECT record::text FROM akd_records WHERE directory = $1 AND id = ANY($2)",
            )
            .bind(&self.directory)
            .bind(bin)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?
        };
        texts.iter().map(|t| decode(t)).collect()
    }

    async fn get_user_data(&self, username: &AkdLabel) -> Result<KeyData, StorageError> {
        let texts: Vec<String> = sqlx::query_scalar(
            "SELECT record::text FROM akd_values WHERE directory = $1 AND label = $2 \
             ORDER BY epoch",
        )
        .bind(&self.directory)
        .bind(username.to_vec())
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        if texts.is_empty() {
            return Err(StorageError::NotFound(format!(
                "no value for this label in directory {}",
                self.directory
            )));
        }
        Ok(KeyData {
            states: texts
                .iter()
                .map(|t| decode_state(t))
                .collect::<Result<_, _>>()?,
        })
    }

    async fn get_user_state(
        &self,
        username: &AkdLabel,
        flag: ValueStateRetrievalFlag,
    ) -> Result<ValueState, StorageError> {
        let (filter, arg, order) = state_filter(flag)?;
        let text: Option<String> = sqlx::query_scalar(&format!(
            "SELECT record::text FROM akd_values WHERE directory = $1 AND label = $2 \
             AND {filter} ORDER BY {order} LIMIT 1"
        ))
        .bind(&self.directory)
        .bind(username.to_vec())
        .bind(arg)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        match text {
            Some(t) => decode_state(&t),
            None => Err(StorageError::NotFound(format!(
                "no value state {flag:?} for this label in directory {}",
                self.directory
            ))),
        }
    }

    async fn get_user_state_versions(
        &self,
        keys: &[AkdLabel],
        flag: ValueStateRetrievalFlag,
    ) -> Result<HashMap<AkdLabel, (u64, AkdValue)>, StorageError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let (filter, arg, order) = state_filter(flag)?;
        let labels: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
        let texts: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT ON (label) record::text FROM akd_values \
             WHERE directory = $1 AND label = ANY($2) AND {filter} ORDER BY label, {order}"
        ))
        .bind(&self.directory)
        .bind(labels)
        .bind(arg)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        texts
            .iter()
            .map(|t| {
                let s = decode_state(t)?;
                Ok((s.username.clone(), (s.version, s.value.clone())))
            })
            .collect()
    }
}

//! Audit records: written in batches, read back by the `audit` command, purged after the
//! retention period.

use super::Store;

/// One audited action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub at: i64,
    pub tenant: String,
    /// Keyed hash of the number (hex); empty when the action named no number.
    pub number_hash: String,
    /// e.g. `verification.start`, `lookup`, `unbind`.
    pub action: String,
    /// Apps involved: a count or a list, as the action records it.
    pub apps: String,
    pub outcome: String,
    pub correlator: String,
}

/// Which records to list.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub since: i64,
    pub number_hash: Option<String>,
    pub tenant: Option<String>,
    pub limit: i64,
}

impl Store {
    /// Appends records, all or none (one transaction), so a batch written again after a failure
    /// is never stored twice.
    pub async fn append_audit(&self, records: &[AuditRecord]) -> sqlx::Result<()> {
        let mut tx = self.pool().begin().await?;
        for chunk in records.chunks(500) {
            let values = (0..chunk.len())
                .map(|i| {
                    let p = 1 + i * 7;
                    format!(
                        "(${p}, ${}, ${}, ${}, ${}, ${}, ${})",
                        p + 1,
                        p + 2,
                        p + 3,
                        p + 4,
                        p + 5,
                        p + 6
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO audit_log (at, tenant, number_hash, action, apps, outcome, correlator) VALUES {values}"
            );
            let mut query = sqlx::query(&sql);
            for r in chunk {
                query = query
                    .bind(r.at)
                    .bind(&r.tenant)
                    .bind(&r.number_hash)
                    .bind(&r.action)
                    .bind(&r.apps)
                    .bind(&r.outcome)
                    .bind(&r.correlator);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// Records matching `filter`, oldest first.
    pub async fn audit_records(&self, filter: &AuditFilter) -> sqlx::Result<Vec<AuditRecord>> {
        let rows: Vec<(i64, String, String, String, String, String, String)> = sqlx::query_as(
            "SELECT at, tenant, number_hash, action, apps, outcome, correlator FROM audit_log \
             WHERE at >= $1 AND ($2 = '' OR number_hash = $2) AND ($3 = '' OR tenant = $3) \
             ORDER BY at LIMIT $4",
        )
        .bind(filter.since)
        .bind(filter.number_hash.clone().unwrap_or_default())
        .bind(filter.tenant.clone().unwrap_or_default())
        .bind(filter.limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(at, tenant, number_hash, action, apps, outcome, correlator)| AuditRecord {
                    at,
                    tenant,
                    number_hash,
                    action,
                    apps,
                    outcome,
                    correlator,
                },
            )
            .collect())
    }
}

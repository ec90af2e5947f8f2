//! The sealed columns at rest, read page by page and rewritten one value at a time: what lets a
//! rotated `stored-data` key's values move to the active key while the gateway runs.

use super::Store;

/// A sealed column that outlives a key rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealedColumn {
    /// `tickets.sealed_number`, bound to `tickets.number_hash`.
    TicketNumber,
    /// `tickets.sealed_account_id`, bound to `tickets.account_key`.
    TicketAccountId,
    /// `submission_numbers.sealed_number`, bound to `submission_numbers.number_hash`.
    PushedNumber,
    /// `tickets.sealed_hint`, bound to `tickets.account_key` + `#hint` (empty for tickets from
    /// before the column: nothing to rewrite).
    TicketHint,
}

impl SealedColumn {
    /// Every such column.
    pub const ALL: [SealedColumn; 4] = [
        SealedColumn::TicketNumber,
        SealedColumn::TicketAccountId,
        SealedColumn::PushedNumber,
        SealedColumn::TicketHint,
    ];

    /// `table.column`, for logs.
    pub fn name(self) -> &'static str {
        match self {
            SealedColumn::TicketNumber => "tickets.sealed_number",
            SealedColumn::TicketAccountId => "tickets.sealed_account_id",
            SealedColumn::PushedNumber => "submission_numbers.sealed_number",
            SealedColumn::TicketHint => "tickets.sealed_hint",
        }
    }

    /// `(table, key columns, row column, sealed column)`.
    fn parts(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            SealedColumn::TicketNumber => ("tickets", "id, 0", "number_hash", "sealed_number"),
            SealedColumn::TicketAccountId => {
                ("tickets", "id, 0", "account_key", "sealed_account_id")
            }
            SealedColumn::TicketHint => {
                ("tickets", "id, 0", "account_key || '#hint'", "sealed_hint")
            }
            SealedColumn::PushedNumber => (
                "submission_numbers",
                "submission_id, seq",
                "COALESCE(number_hash, '')",
                "sealed_number",
            ),
        }
    }
}

/// Where a sealed value sits: the row's key (`(id, 0)` for tickets, `(submission, seq)` for
/// pushed numbers), what it is bound to, and the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedValue {
    pub key: String,
    pub seq: i64,
    pub row: String,
    pub sealed: String,
}

impl Store {
    /// Up to `limit` values of `column` after the row `(key, seq)`, in key order.
    pub async fn sealed_page(
        &self,
        column: SealedColumn,
        after: (&str, i64),
        limit: i64,
    ) -> sqlx::Result<Vec<SealedValue>> {
        let (table, keys, row, sealed) = column.parts();
        let sql = match column {
            SealedColumn::PushedNumber => format!(
                "SELECT {keys}, {row}, {sealed} FROM {table} \
                 WHERE submission_id > $1 OR (submission_id = $1 AND seq > $2) \
                 ORDER BY submission_id, seq LIMIT $3"
            ),
            // `$2` (0, or the last page's 0) takes part so both backends bind it alike.
            _ => format!(
                "SELECT {keys}, {row}, {sealed} FROM {table} \
                 WHERE id > $1 AND $2 >= 0 ORDER BY id LIMIT $3"
            ),
        };
        let rows: Vec<(String, i64, String, String)> = sqlx::query_as(&sql)
            .bind(after.0)
            .bind(after.1)
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(key, seq, row, sealed)| SealedValue {
                key,
                seq,
                row,
                sealed,
            })
            .collect())
    }

    /// Replaces `value.sealed` with `new` if the row still holds it (a concurrent writer wins).
    pub async fn replace_sealed(
        &self,
        column: SealedColumn,
        value: &SealedValue,
        new: &str,
    ) -> sqlx::Result<bool> {
        let (table, _, _, sealed) = column.parts();
        let sql = match column {
            SealedColumn::PushedNumber => format!(
                "UPDATE {table} SET {sealed} = $1 \
                 WHERE submission_id = $2 AND seq = $3 AND {sealed} = $4"
            ),
            _ => format!(
                "UPDATE {table} SET {sealed} = $1 WHERE id = $2 AND $3 >= 0 AND {sealed} = $4"
            ),
        };
        Ok(sqlx::query(&sql)
            .bind(new)
            .bind(&value.key)
            .bind(value.seq)
            .bind(&value.sealed)
            .execute(self.pool())
            .await?
            .rows_affected()
            == 1)
    }
}

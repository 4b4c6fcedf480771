//! Subjects' data keys ([`SubjectStore`]), for both databases: the statements agree.

use std::collections::BTreeMap;

use futures::future::BoxFuture;

use super::{SqlStore, Stmt};
use crate::error::Result;
use crate::subject::{SubjectKey, SubjectStore, master_key, new_data_key, unwrap_data_key};

impl<S: SqlStore> SubjectStore for S {
    fn subject_keys<'a>(
        &'a self,
        subjects: &'a [String],
        create: bool,
    ) -> BoxFuture<'a, Result<BTreeMap<String, SubjectKey>>> {
        Box::pin(async move {
            let mut out = BTreeMap::new();
            if subjects.is_empty() {
                return Ok(out);
            }
            let master = master_key(self.settings())?;
            let now = self.settings().clock.now().as_micros();
            let mut conn = match create {
                true => self.writer().acquire().await?,
                false => self.reader().acquire().await?,
            };
            for subject in subjects {
                if out.contains_key(subject) {
                    continue;
                }
                if create {
                    // Made once: a concurrent creator's key wins, and both read it back.
                    let (_, wrapped) = new_data_key(master, subject)?;
                    Stmt::<S::Db>::new(
                        "INSERT INTO subject_keys (subject, wrapped, created_at) \
                         VALUES ($1, $2, $3) ON CONFLICT (subject) DO NOTHING",
                    )
                    .bind(subject.as_str())
                    .bind(wrapped)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                }
                let row = Stmt::<S::Db>::new(
                    "SELECT wrapped, erased_at FROM subject_keys WHERE subject = $1",
                )
                .bind(subject.as_str())
                .fetch_optional(&mut *conn)
                .await?;
                let Some(row) = row else { continue };
                let key = match row.get::<Option<Vec<u8>>>("wrapped")? {
                    Some(wrapped) => SubjectKey::Key(unwrap_data_key(master, subject, &wrapped)?),
                    None => SubjectKey::Erased,
                };
                out.insert(subject.clone(), key);
            }
            Ok(out)
        })
    }

    fn erase_subject<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let now = self.settings().clock.now().as_micros();
            let mut tx = self.begin_write().await?;
            let erased = Stmt::<S::Db>::new(
                "UPDATE subject_keys SET wrapped = NULL, erased_at = $2 \
                 WHERE subject = $1 AND wrapped IS NOT NULL",
            )
            .bind(subject)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            // A subject erased before it ever had a key must not get one later either.
            Stmt::<S::Db>::new(
                "INSERT INTO subject_keys (subject, wrapped, created_at, erased_at) \
                 VALUES ($1, NULL, $2, $2) ON CONFLICT (subject) DO NOTHING",
            )
            .bind(subject)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(erased == 1)
        })
    }
}

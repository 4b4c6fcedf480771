//! Subjects' data keys on Redis ([`SubjectStore`]): a hash per subject, its wrapped key or, once
//! erased, a tombstone.

use std::collections::BTreeMap;

use futures::future::BoxFuture;

use super::{RedisLog, redis_error};
use crate::error::Result;
use crate::subject::{SubjectKey, SubjectStore, master_key, new_data_key, unwrap_data_key};

impl SubjectStore for RedisLog {
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
            let master = master_key(&self.inner.config)?;
            let mut conn = self.conn();
            for subject in subjects {
                if out.contains_key(subject) {
                    continue;
                }
                let key = self.key(&format!("subject:{subject}"));
                let fresh = match create {
                    true => new_data_key(master, subject)?.1,
                    false => Vec::new(),
                };
                let erased: bool = redis::cmd("HEXISTS")
                    .arg(&key)
                    .arg("erased")
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                if erased {
                    out.insert(subject.clone(), SubjectKey::Erased);
                    continue;
                }
                let wrapped: Option<Vec<u8>> = self
                    .inner
                    .subject_key
                    .key(&key)
                    .arg(fresh)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                match wrapped {
                    Some(w) => {
                        out.insert(
                            subject.clone(),
                            SubjectKey::Key(unwrap_data_key(master, subject, &w)?),
                        );
                    }
                    // Erased between the two calls.
                    None if create => {
                        out.insert(subject.clone(), SubjectKey::Erased);
                    }
                    None => {}
                }
            }
            Ok(out)
        })
    }

    fn erase_subject<'a>(&'a self, subject: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let had: i64 = self
                .inner
                .erase_subject
                .key(self.key(&format!("subject:{subject}")))
                .arg(self.inner.config.clock.now().as_micros())
                .invoke_async(&mut self.conn())
                .await
                .map_err(redis_error)?;
            Ok(had == 1)
        })
    }
}

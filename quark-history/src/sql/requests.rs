//! Answers to queries and updates, for both databases (the statements are the same).

use futures::future::BoxFuture;

use super::{SqlStore, Stmt};
use crate::error::Result;
use crate::requests::{Answer, RequestStore, decode, encode, stale_before};

impl<S: SqlStore> RequestStore for S {
    fn answer_request<'a>(
        &'a self,
        id: &'a str,
        instance_id: &'a str,
        answer: Answer,
    ) -> BoxFuture<'a, Result<Answer>> {
        Box::pin(async move {
            let now = self.settings().clock.now();
            let mut conn = self.writer().acquire().await?;
            Stmt::<S::Db>::new("DELETE FROM request_answers WHERE answered_at < $1")
                .bind(stale_before(now).as_micros())
                .execute(&mut *conn)
                .await?;
            Stmt::<S::Db>::new(
                "INSERT INTO request_answers (id, instance_id, answer, answered_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(instance_id)
            .bind(encode(&answer))
            .bind(now.as_micros())
            .execute(&mut *conn)
            .await?;
            let stored: Vec<u8> =
                Stmt::<S::Db>::new("SELECT answer FROM request_answers WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *conn)
                    .await?
                    .get("answer")?;
            decode(&stored)
        })
    }

    fn request_answer<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Answer>>> {
        Box::pin(async move {
            let row = Stmt::<S::Db>::new("SELECT answer FROM request_answers WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *self.reader().acquire().await?)
                .await?;
            match row {
                Some(row) => Ok(Some(decode(&row.get::<Vec<u8>>("answer")?)?)),
                None => Ok(None),
            }
        })
    }

    fn forget_answer<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let gone = Stmt::<S::Db>::new("DELETE FROM request_answers WHERE id = $1")
                .bind(id)
                .execute(&mut *self.writer().acquire().await?)
                .await?;
            Ok(gone > 0)
        })
    }
}

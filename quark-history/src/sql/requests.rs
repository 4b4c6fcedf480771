//! Answers to queries and updates, for both databases (the statements are the same).

use futures::future::BoxFuture;

use super::{SqlStore, Stmt};
use crate::error::Result;
use crate::requests::{Answer, RequestStore, decode, encode, stale_before};

impl<S: SqlStore> RequestStore for S {
    fn answer_request<'a>(
        &'a self,
        instance_id: &'a str,
        id: &'a str,
        answer: Answer,
    ) -> BoxFuture<'a, Result<Answer>> {
        Box::pin(async move {
            let now = self.settings().clock.now();
            let mut conn = self.writer().acquire().await?;
            Stmt::<S::Db>::new("DELETE FROM request_answers WHERE answered_at < $1")
                .bind(stale_before(now).as_micros())
                .execute(&mut *conn)
                .await?;
            // An answer already there stands: the no-op update returns it.
            let stored: Vec<u8> = Stmt::<S::Db>::new(
                "INSERT INTO request_answers (instance_id, id, answer, answered_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (instance_id, id) DO UPDATE SET answer = request_answers.answer \
                 RETURNING answer",
            )
            .bind(instance_id)
            .bind(id)
            .bind(encode(&answer))
            .bind(now.as_micros())
            .fetch_one(&mut *conn)
            .await?
            .get("answer")?;
            decode(&stored)
        })
    }

    fn request_answer<'a>(
        &'a self,
        instance_id: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Answer>>> {
        Box::pin(async move {
            let row = Stmt::<S::Db>::new(
                "SELECT answer FROM request_answers WHERE instance_id = $1 AND id = $2",
            )
            .bind(instance_id)
            .bind(id)
            .fetch_optional(&mut *self.reader().acquire().await?)
            .await?;
            match row {
                Some(row) => Ok(Some(decode(&row.get::<Vec<u8>>("answer")?)?)),
                None => Ok(None),
            }
        })
    }

    fn forget_answer<'a>(
        &'a self,
        instance_id: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let gone = Stmt::<S::Db>::new(
                "DELETE FROM request_answers WHERE instance_id = $1 AND id = $2",
            )
            .bind(instance_id)
            .bind(id)
            .execute(&mut *self.writer().acquire().await?)
            .await?;
            Ok(gone > 0)
        })
    }
}

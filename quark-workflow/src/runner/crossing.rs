//! What a commit on one shard sends to instances on others: it cannot write to another
//! database, so it writes [`Crossing`]s to its outbox, which the relay delivers there once.

use quark_history::shards::Crossing;
use quark_history::{Commit, TaskKind};

use super::{HostRef, RunEvent, Runner};

impl Runner {
    /// Moves what `commit` tells instances on other shards (a child's end for its parent, a
    /// notice for a child, an entity command's result for its orchestration) into its outbox,
    /// with the receivers' wake-ups left out. The relay there appends the events and wakes the
    /// receiver, once. Nothing to do for a runner that is not sharded. `own`: the instance whose
    /// turn this is, here by definition.
    pub(super) async fn news_across_shards(
        &self,
        commit: &mut Commit,
        own: Option<&str>,
        host: &HostRef,
    ) -> quark_history::Result<()> {
        let mut i = 0;
        while i < commit.appends.len() {
            let receiver = commit.appends[i].instance_id.as_str();
            if Some(receiver) == own || self.elsewhere(receiver).await?.is_none() {
                i += 1;
                continue;
            }
            let append = commit.appends.remove(i);
            let receiver = append.instance_id.as_str();
            commit.tasks.retain(|t| {
                t.kind != TaskKind::Orchestration || t.instance_id.as_deref() != Some(receiver)
            });
            commit
                .outbox
                .push(Crossing::Events(append.events).message(receiver)?);
            host.note(RunEvent::NewsAcrossShards);
        }
        Ok(())
    }

    /// Sends a turn's entity commands whose entities live on other shards (`remote`: index in
    /// `commit.tasks`, stream) there, through the outbox: each runs on its entity's shard, which
    /// holds the stream it appends to, and its result comes back as news. A turn that ends its
    /// instance (`waiting` false) drops them, as it drops its other commands.
    pub(super) fn commands_across_shards(
        &self,
        commit: &mut Commit,
        remote: &[(usize, String)],
        waiting: bool,
        host: &HostRef,
    ) -> quark_history::Result<()> {
        let mut indices: Vec<usize> = remote.iter().map(|(i, _)| *i).collect();
        indices.sort_unstable();
        let mut messages = Vec::new();
        for (i, stream) in remote {
            if waiting && let Some(task) = commit.tasks.get(*i) {
                messages.push(Crossing::activity(task)?.message(stream)?);
                host.note(RunEvent::EntityAcrossShards);
            }
        }
        for i in indices.into_iter().rev() {
            if i < commit.tasks.len() {
                commit.tasks.remove(i);
            }
        }
        commit.outbox.extend(messages);
        Ok(())
    }
}

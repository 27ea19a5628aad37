//! Revocation and listing: `session.revoke` (one session), `session.revoke_user`
//! (every session of a user, in pages of the user's index) and `session.list`.

use shoal_client::proto::{RevokeTarget, SessionListEntry};

use crate::error::OpError;
use crate::store::StoreError;

use super::{bump, plausible_session_id, plausible_token, Sessions, INDEX_PAGE, LIST_MAX};

impl Sessions {
    pub(super) async fn revoke(&self, target: RevokeTarget) -> Result<bool, OpError> {
        let hash = match target {
            RevokeTarget::Token(t) if plausible_token(&t) => self.hasher().await?.session_hash(&t),
            RevokeTarget::SessionId(s) if plausible_session_id(&s) => s,
            _ => return Ok(false),
        };
        match self.scripts.revoke(&self.store, &self.cx, &hash).await? {
            Some((id, user)) => {
                bump(&self.counters.revocations);
                self.local.apply_session(&hash, id);
                // Best effort: a leftover index member is also removed by
                // session.list, session.create and its absolute expiry.
                let zrem = redis::cmd("ZREM")
                    .arg(self.cx.keys.index(&user))
                    .arg(&hash)
                    .clone();
                if let Err(e) = self.store.cmd::<i64>(&zrem).await {
                    tracing::debug!(error = %e, "could not remove a revoked session from its user index");
                }
                Ok(true)
            }
            None => {
                self.local.evict(&hash);
                Ok(false)
            }
        }
    }

    /// One page of `user`'s index: `count` members from rank `from`, highest
    /// score (latest absolute expiry) first.
    pub(super) async fn index_page(
        &self,
        user: &str,
        from: usize,
        count: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.store
            .cmd(
                redis::cmd("ZRANGE")
                    .arg(self.cx.keys.index(user))
                    .arg(from)
                    .arg(from + count - 1)
                    .arg("REV"),
            )
            .await
    }

    pub(super) async fn revoke_user(&self, user: &str) -> Result<u64, OpError> {
        // Raising the epoch revokes every session at once (Redis refuses older
        // ones from then on); the deletions that follow are housekeeping, a
        // page at a time, so no call carries every session of a big user.
        let (id, epoch) = self
            .scripts
            .revoke_user(&self.store, &self.cx, user)
            .await?;
        bump(&self.counters.user_revocations);
        self.local.apply_user(user, epoch, id);
        let mut deleted = 0;
        let mut from = 0;
        loop {
            let page = self.index_page(user, from, INDEX_PAGE).await?;
            if page.is_empty() {
                break;
            }
            let (d, kept) = self
                .scripts
                .revoke_page(&self.store, &self.cx, user, epoch, &page)
                .await?;
            deleted += d;
            // Kept members (sessions created after the revocation) stay ahead of
            // the next page; a member a concurrent create shifts past the cursor
            // is still refused by its epoch and cleaned by session.list.
            from += usize::try_from(kept).unwrap_or(INDEX_PAGE);
            if page.len() < INDEX_PAGE {
                break;
            }
        }
        Ok(deleted)
    }

    pub(super) async fn list(&self, user: &str) -> Result<Vec<SessionListEntry>, OpError> {
        // A page at a time, latest absolute expiry first, up to LIST_MAX live
        // sessions; each page also drops dead members from the index.
        let mut out = Vec::new();
        let mut from = 0;
        while out.len() < LIST_MAX {
            let page = self.index_page(user, from, INDEX_PAGE).await?;
            if page.is_empty() {
                break;
            }
            let rows = self
                .scripts
                .list(&self.store, &self.cx, user, &page)
                .await?;
            from += rows.len();
            out.extend(rows.into_iter().map(|r| SessionListEntry {
                session_id: r.hash,
                created_at_ms: r.created_at_ms,
                last_seen_ms: r.last_seen_ms,
                expires_at_ms: r.expires_at_ms,
            }));
            if page.len() < INDEX_PAGE {
                break;
            }
        }
        out.truncate(LIST_MAX);
        Ok(out)
    }
}

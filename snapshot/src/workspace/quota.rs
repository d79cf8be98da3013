//! Quotas: a workspace's limits on bytes and names (`Quota`), and what it holds now
//! (`Usage`). Usage is measured once when a limit is set, the workspace opened or
//! checked out (O(loaded entries) plus, for each unloaded subtree, its recorded bytes
//! and a name count memoized by directory node), then kept by every change: a name
//! added or removed, a file grown or shrunk. A change that would pass a limit fails
//! with `QuotaExceeded` (EDQUOT) before anything changes; shrinking is always allowed.
//! Engines call `reserve` before writing a file's bytes themselves.

use super::*;
use crate::workspace::types::{Quota, Usage};

impl State {
    /// What the tree holds now, counted as `Quota` counts it.
    pub(super) fn measure(&self, shared: &Shared) -> Result<Usage> {
        let mut u = Usage::default();
        let mut stack = vec![Ino::ROOT];
        while let Some(dir) = stack.pop() {
            match &self.inode(dir)?.node {
                Node::Dir {
                    state: DirState::Unloaded(t),
                    ..
                } => {
                    u.bytes += t.bytes;
                    u.inodes += shared.count_names(&t.node)?;
                }
                Node::Dir {
                    state: DirState::Loaded { entries, .. },
                    ..
                } => {
                    for child in entries.values() {
                        u.inodes += 1;
                        let i = self.inode(*child)?;
                        match &i.node {
                            Node::Dir { .. } => stack.push(*child),
                            Node::File(_) => u.bytes += file_size(i),
                            _ => {}
                        }
                    }
                }
                _ => return Err(Error::NotADirectory(dir.to_string())),
            }
        }
        Ok(u)
    }

    /// Measures the usage again (a no-op without a quota).
    pub(super) fn remeasure(&mut self, shared: &Shared) -> Result<()> {
        if self.quota.is_some() {
            self.usage = self.measure(shared)?;
        }
        Ok(())
    }

    /// Refuses growth by `bytes` and `inodes` that would take the usage past a limit.
    pub(super) fn check_quota(&self, bytes: u64, inodes: u64) -> Result<()> {
        let Some(q) = &self.quota else {
            return Ok(());
        };
        let over = |what: &str, used: u64, add: u64, limit: Option<u64>| match limit {
            Some(l) if add > 0 && used.saturating_add(add) > l => {
                Some(format!("{what}: {used} used + {add} asked > {l} allowed"))
            }
            _ => None,
        };
        let what = over("bytes", self.usage.bytes, bytes, q.bytes)
            .or_else(|| over("inodes", self.usage.inodes, inodes, q.inodes));
        match what {
            Some(what) => Err(Error::QuotaExceeded {
                workspace: self.id,
                what,
            }),
            None => Ok(()),
        }
    }

    /// Checks growth (`check_quota`), then counts it.
    pub(super) fn charge(&mut self, bytes: u64, inodes: u64) -> Result<()> {
        self.check_quota(bytes, inodes)?;
        self.account(bytes as i64, inodes as i64);
        Ok(())
    }

    /// Counts a change of the usage without checking it (shrinking, or growth that was
    /// checked before it happened).
    pub(super) fn account(&mut self, bytes: i64, inodes: i64) {
        if self.quota.is_some() {
            self.usage.bytes = self.usage.bytes.saturating_add_signed(bytes);
            self.usage.inodes = self.usage.inodes.saturating_add_signed(inodes);
        }
    }

    /// Counts file `ino` going from `old` to its size now, once per name.
    pub(super) fn account_resize(&mut self, ino: Ino, old: u64) {
        if self.quota.is_none() {
            return;
        }
        if let Some(i) = self.inodes.get(&ino) {
            let names = i.parents.len() as i64;
            let delta = file_size(i) as i64 - old as i64;
            self.account(delta * names, 0);
        }
    }

    /// Refuses to grow file `ino` to `size` past the byte limit.
    pub(super) fn check_resize(&self, ino: Ino, size: u64) -> Result<()> {
        if self.quota.is_none() {
            return Ok(());
        }
        let i = self.inode(ino)?;
        let old = file_size(i);
        if size <= old {
            return Ok(());
        }
        self.check_quota((size - old) * i.parents.len() as u64, 0)
    }
}

/// A regular file's size as the table knows it (0 for other kinds).
pub(super) fn file_size(i: &Inode) -> u64 {
    match &i.node {
        Node::File(FileData::Clean(c)) => c.size,
        Node::File(FileData::Owned { size, .. }) => *size,
        _ => 0,
    }
}

impl Workspace {
    /// Its limits (`None`: unlimited).
    pub fn quota(&self) -> Option<Quota> {
        self.state.read().quota
    }

    /// What it holds now, while it has a quota (usage is kept only then).
    pub fn usage(&self) -> Option<Usage> {
        self.limits().map(|(_, u)| u)
    }

    /// Its quota and what it holds against it, read together.
    pub fn limits(&self) -> Option<(Quota, Usage)> {
        let st = self.state.read();
        st.quota.map(|q| (q, st.usage))
    }

    /// Sets (or, with `None` or an unlimited quota, removes) its limits, persisted with
    /// the workspace (one synced write), and returns the usage measured now. A limit
    /// below the usage is allowed: the workspace can then only shrink.
    pub fn set_quota(&self, quota: Option<Quota>) -> Result<Option<Usage>> {
        self.check_writable()?;
        let quota = quota.filter(|q| !q.is_unlimited());
        let _sync = self.sync_lock.lock();
        let mut st = self.state.write();
        let usage = match quota {
            Some(_) => Some(st.measure(&self.shared)?),
            None => None,
        };
        let mut rec = self.make_record(&st, None);
        rec.quota = quota;
        let mut batch = Batch::new();
        batch.put(Cf::Workspaces, self.id.key(), snapshot::encode_record(&rec));
        self.shared.store.backend().write(batch, Durability::Sync)?;
        st.quota = quota;
        st.usage = usage.unwrap_or_default();
        self.limited.store(quota.is_some(), Relaxed);
        Ok(usage)
    }

    /// Refuses, with `QuotaExceeded`, to let file `ino` grow to `end` bytes past the
    /// workspace's byte limit: engines that write a file's bytes themselves call it
    /// first (the write then reports the new size through `wrote`). Free without a quota.
    pub fn reserve(&self, ino: Ino, end: u64) -> Result<()> {
        if !self.limited.load(Relaxed) {
            return Ok(());
        }
        self.state.read().check_resize(ino, end)
    }

    /// True when it has a quota: engines then serve writes themselves (a write passed
    /// through to the kernel could not be refused).
    pub fn has_quota(&self) -> bool {
        self.limited.load(Relaxed)
    }
}

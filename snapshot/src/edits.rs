//! Edit lists: changes keyed by path over a base tree — what an engine that learns its
//! changes by scanning (an overlay upperdir: new files, whiteouts, opaque directories)
//! hands the commit path. Building one loads and re-encodes only the directories on
//! edited paths, so a commit costs O(edited paths × depth + new bytes), never O(tree).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::commit::{Built, ChangeSource, Landed};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::name::Name;
use crate::repo::Shared;
use crate::snapshot;
use crate::store::{Batch, Cf, ObjectWriter};
use crate::tree::{self, Attrs, EntryKind, EntryRef, TreeRef};
use crate::workspace::WorkspaceRecord;

/// One change at a path.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// Whatever is there becomes this entry (stored already): a file, symlink, special
    /// file, or a whole stored directory.
    Entry(EntryKind),
    /// Whatever is there becomes a regular file whose bytes are read from `source` when
    /// the commit is built (a `source` gone by then leaves the path as the base has it).
    File {
        /// Its attributes.
        attrs: Attrs,
        /// A real file holding its content.
        source: PathBuf,
    },
    /// A directory with these attributes. `opaque`: its entries in the base are dropped
    /// (a new directory, or one that replaced something); otherwise they are kept and
    /// edits below apply to them.
    Dir {
        /// Its attributes.
        attrs: Attrs,
        /// Whether the base's entries are hidden.
        opaque: bool,
    },
    /// A directory moved here from path `from` of the base tree (an overlay
    /// `redirect`): the base's entries at `from`, with the edits below applied to them.
    MovedDir {
        /// Its attributes.
        attrs: Attrs,
        /// Where it was in the base tree (`/`-separated, relative to the root).
        from: String,
    },
    /// Whatever is there is removed (an overlay whiteout).
    Delete,
}

#[derive(Clone, Debug, Default)]
struct Node {
    edit: Option<Edit>,
    children: BTreeMap<Name, Node>,
}

/// Changes by path, applied over a base tree by `Repo::commit_edits`.
#[derive(Clone, Debug, Default)]
pub struct Edits {
    root: Node,
    count: usize,
}

impl Edits {
    /// No changes.
    pub fn new() -> Edits {
        Edits::default()
    }

    /// Sets the change at `path` (`/`-separated, relative to the root; `""` is the root,
    /// which takes only `Edit::Dir`). A later change of the same path replaces it.
    pub fn set(&mut self, path: &str, edit: Edit) -> Result<()> {
        let mut node = &mut self.root;
        let mut depth = 0;
        for comp in path.split('/').filter(|c| !c.is_empty()) {
            node = node.children.entry(Name::try_from(comp)?).or_default();
            depth += 1;
        }
        if depth == 0 && !matches!(edit, Edit::Dir { .. }) {
            return Err(Error::InvalidArgument(
                "the root can only take a directory edit".into(),
            ));
        }
        if node.edit.replace(edit).is_none() {
            self.count += 1;
        }
        Ok(())
    }

    /// Number of edited paths.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing is edited.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// An edit list over a base tree, as a source of changes; `moves` is the record of a
/// workspace that lands on the new snapshot with it.
pub(crate) struct EditSource<'a> {
    pub shared: &'a Shared,
    pub base: TreeRef,
    pub edits: &'a Edits,
    pub moves: Option<WorkspaceRecord>,
}

impl ChangeSource for EditSource<'_> {
    fn stage(&mut self, landed: &Landed, batch: &mut Batch) {
        if let (Some(rec), Some(s)) = (&self.moves, &landed.snapshot) {
            let rec = WorkspaceRecord {
                base: Some(s.id),
                base_root: s.root,
                head: None,
                ..rec.clone()
            };
            batch.put(Cf::Workspaces, rec.id.key(), snapshot::encode_record(&rec));
        }
    }

    fn build(&mut self, w: &mut ObjectWriter<'_>) -> Result<Built> {
        if self.edits.is_empty() {
            return Ok(Built {
                tree: self.base,
                changed_paths: 0,
            });
        }
        let mut changed = 0;
        let root = &self.edits.root;
        let (base, attrs) = match &root.edit {
            Some(Edit::Dir { attrs, opaque }) => {
                let base_attrs = &self.shared.node(&self.base.node)?.attrs;
                if *opaque || !same_attrs(attrs, base_attrs) {
                    changed += 1;
                }
                ((!opaque).then_some(self.base.node), attrs.clone())
            }
            _ => (
                Some(self.base.node),
                self.shared.node(&self.base.node)?.attrs.clone(),
            ),
        };
        let over = self.base.node;
        let tree = apply_dir(self.shared, w, over, base, attrs, root, "", &mut changed)?;
        Ok(Built {
            tree,
            changed_paths: changed,
        })
    }
}

/// Re-encodes one directory: its base entries (unless opaque) with the edits below it.
#[allow(clippy::too_many_arguments)]
fn apply_dir(
    shared: &Shared,
    w: &mut ObjectWriter<'_>,
    over: Hash,
    base: Option<Hash>,
    attrs: Attrs,
    node: &Node,
    path: &str,
    changed: &mut u64,
) -> Result<TreeRef> {
    let mut entries: BTreeMap<Name, EntryKind> = match base {
        Some(h) => shared.node(&h)?.entries.iter().cloned().collect(),
        None => BTreeMap::new(),
    };
    for (name, child) in &node.children {
        let child_path = format!("{path}/{name}");
        let leaf = |what: &str| -> Result<()> {
            if child.children.is_empty() {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!(
                    "{child_path}: edits below a {what}"
                )))
            }
        };
        match &child.edit {
            Some(Edit::Delete) => {
                leaf("deleted path")?;
                if entries.remove(name).is_some() {
                    *changed += 1;
                }
            }
            Some(Edit::Entry(kind)) => {
                leaf("stored entry")?;
                if entries.insert(name.clone(), kind.clone()).as_ref() != Some(kind) {
                    *changed += 1;
                }
            }
            Some(Edit::File { attrs, source }) => {
                leaf("file")?;
                let f = match std::fs::File::open(source) {
                    Ok(f) => f,
                    // Renamed or deleted since the edit was made (an agent writing while
                    // its workspace is snapshotted): the path stays as the base has it,
                    // and a later snapshot records where the file went.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io(format!("open {}", source.display()), e)),
                };
                let content = tree::store_file(w, std::io::BufReader::with_capacity(256 << 10, f))?;
                let kind = EntryKind::File {
                    attrs: attrs.clone(),
                    content,
                };
                if entries.insert(name.clone(), kind.clone()) != Some(kind) {
                    *changed += 1;
                }
            }
            Some(Edit::Dir { attrs, opaque }) => {
                let sub = match entries.get(name) {
                    Some(EntryKind::Dir { node, .. }) if !opaque => Some(*node),
                    _ => None,
                };
                // A directory edit that repeats the base's attributes over the base's
                // entries (an overlay copies up every directory on a changed path)
                // changes nothing by itself.
                let same = match sub {
                    Some(h) => same_attrs(&shared.node(&h)?.attrs, attrs),
                    None => false,
                };
                let t = apply_dir(
                    shared,
                    w,
                    over,
                    sub,
                    attrs.clone(),
                    child,
                    &child_path,
                    changed,
                )?;
                let old = entries.insert(name.clone(), t.entry());
                if !same && old != Some(t.entry()) {
                    *changed += 1;
                }
            }
            Some(Edit::MovedDir { attrs, from }) => {
                let sub = dir_at(shared, over, from).map_err(|e| {
                    Error::InvalidArgument(format!("{child_path}: moved from {from:?}: {e}"))
                })?;
                let t = apply_dir(
                    shared,
                    w,
                    over,
                    Some(sub),
                    attrs.clone(),
                    child,
                    &child_path,
                    changed,
                )?;
                if entries.insert(name.clone(), t.entry()) != Some(t.entry()) {
                    *changed += 1;
                }
            }
            None => {
                let sub = match entries.get(name) {
                    Some(EntryKind::Dir { node, .. }) => *node,
                    _ => {
                        return Err(Error::NotADirectory(format!(
                            "{child_path}: edits below it, but the base has no directory there"
                        )));
                    }
                };
                let sub_attrs = shared.node(&sub)?.attrs.clone();
                let t = apply_dir(
                    shared,
                    w,
                    over,
                    Some(sub),
                    sub_attrs,
                    child,
                    &child_path,
                    changed,
                )?;
                entries.insert(name.clone(), t.entry());
            }
        }
    }
    let refs: Vec<(&Name, EntryRef<'_>)> = entries.iter().map(|(n, k)| (n, k.as_ref())).collect();
    tree::encode_dir(&attrs, &refs).store(w)
}

/// Equal but for the mtime, which a directory's new entries move and which is outside
/// the fingerprint: such a directory is not a changed path by itself.
fn same_attrs(a: &Attrs, b: &Attrs) -> bool {
    (a.mode, a.uid, a.gid, &a.xattrs) == (b.mode, b.uid, b.gid, &b.xattrs)
}

/// The entry at `path` (`/`-separated) below the directory node `root`, or `None` when
/// nothing is there. Loads only the directories on the path.
pub(crate) fn entry_at(shared: &Shared, root: Hash, path: &str) -> Result<Option<EntryKind>> {
    let mut node = root;
    let mut comps = path.split('/').filter(|c| !c.is_empty()).peekable();
    while let Some(comp) = comps.next() {
        let name = Name::try_from(comp)?;
        let dir = shared.node(&node)?;
        let Some((_, kind)) = dir.entries.iter().find(|(n, _)| *n == name) else {
            return Ok(None);
        };
        match kind {
            _ if comps.peek().is_none() => return Ok(Some(kind.clone())),
            EntryKind::Dir { node: child, .. } => node = *child,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// The node of the directory at `path` below `root`.
fn dir_at(shared: &Shared, root: Hash, path: &str) -> Result<Hash> {
    match entry_at(shared, root, path)? {
        _ if path.split('/').all(str::is_empty) => Ok(root),
        Some(EntryKind::Dir { node, .. }) => Ok(node),
        Some(_) => Err(Error::NotADirectory(path.to_string())),
        None => Err(Error::NoEntry(path.to_string())),
    }
}

//! Path-based helpers, for import, tests and tools.

use super::*;

impl Workspace {
    /// Resolves a `/`-separated path relative to the root, without following symlinks.
    pub fn resolve(&self, path: &str) -> Result<Ino> {
        let mut st = self.state.write();
        let mut ino = Ino::ROOT;
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let name = Name::try_from(comp)?;
            if st.inode(ino)?.kind() != Kind::Dir {
                return Err(Error::NotADirectory(comp.to_string()));
            }
            ino = st.lookup(&self.shared, ino, &name)?;
        }
        Ok(ino)
    }

    /// Splits `path` into its parent directory's inode and its last name.
    pub fn parent_of(&self, path: &str) -> Result<(Ino, Name)> {
        let path = path.trim_end_matches('/');
        let (dir, last) = match path.rfind('/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => ("", path),
        };
        let parent = self.resolve(dir)?;
        Ok((parent, Name::try_from(last)?))
    }

    /// The whole content of the file at `path`.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let ino = self.resolve(path)?;
        let size = self.getattr(ino)?.size;
        let mut out = Vec::with_capacity(size as usize);
        while (out.len() as u64) < size {
            let chunk = self.read(
                ino,
                out.len() as u64,
                (size - out.len() as u64).min(1 << 20) as u32,
            )?;
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Creates or replaces the file at `path` with `data` (mode 0644 when created).
    pub fn write_file(&self, path: &str, data: &[u8]) -> Result<Ino> {
        let (parent, name) = self.parent_of(path)?;
        let ino = match self.create(parent, &name, Kind::File, 0o644, 0, 0) {
            Ok(st) => st.ino,
            Err(Error::AlreadyExists(_)) => {
                let ino = self.resolve(path)?;
                self.setattr(
                    ino,
                    SetAttr {
                        size: Some(0),
                        ..Default::default()
                    },
                )?;
                ino
            }
            Err(e) => return Err(e),
        };
        self.write(ino, 0, data)?;
        Ok(ino)
    }

    /// Creates the directory at `path`.
    pub fn mkdir_path(&self, path: &str) -> Result<Ino> {
        let (parent, name) = self.parent_of(path)?;
        Ok(self.mkdir(parent, &name, 0o755, 0, 0)?.ino)
    }

    /// Lists every path below the root with its kind, in depth-first name order.
    pub fn walk(&self) -> Result<Vec<(String, Kind)>> {
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), Ino::ROOT)];
        while let Some((prefix, ino)) = stack.pop() {
            let mut children = self.readdir(ino)?;
            children.reverse();
            for e in children {
                let path = format!("{prefix}{}", e.name);
                if e.kind == Kind::Dir {
                    stack.push((format!("{path}/"), e.ino));
                }
                out.push((path, e.kind));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The workspace's state directory (own file copies live in `data/`).
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }
}

//! Volumes at their absolute mount paths: a process started by the sandbox's kubelet (a container or an
//! exec'd command) gets a private mount namespace whose root is the host's root with the pod's volumes
//! bind-mounted at their `mountPath`s — nothing of it is visible on the host.
//!
//! How: the plan is computed in the parent ([`MountPlan::new`]: every path and every directory listing
//! it needs, as C strings), and [`MountPlan::enter`] runs between `fork` and `exec` using system calls
//! only (no allocation):
//!
//! 1. `unshare(CLONE_NEWNS)`, then `/` becomes recursively private (no mount propagates to the host);
//! 2. the host's `/` is recursively bind-mounted onto an empty directory `R` under the state dir;
//! 3. for each volume (parents before children): if its mount path exists in that tree, the volume is
//!    bind-mounted over it. If not, the nearest existing ancestor `A` is *shadowed*: a tmpfs is mounted
//!    over `R/A` and every entry of the host's `A` is bind-mounted (or, for symlinks, re-created) back
//!    into it, so the missing directories can be created on the tmpfs — inside the namespace only. A
//!    mount path inside another volume is created in that volume, as the kubelet does;
//! 4. `readOnly` mounts are remounted read-only; `R` is hidden inside itself (no loop for tree walkers);
//! 5. `chroot(R)` and `chdir` to the working directory (same absolute path as on the host).
//!
//! It needs `CAP_SYS_ADMIN` (the sandbox runs as root in tests and CI). [`available`] probes it once;
//! without it, processes run without a namespace and see volumes only through the pod directory's links
//! (relative paths such as `var/lib/data`).

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

/// One volume to show at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Host directory (or file) holding the data.
    pub source: PathBuf,
    /// Absolute path the process sees it at.
    pub target: PathBuf,
    pub read_only: bool,
}

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A mount path is not absolute or climbs with `..`.
    #[error("mount path {0} must be absolute and must not contain '..'")]
    Path(PathBuf),
    /// Reading the host tree (a directory to shadow, a link) failed.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A path contains a NUL byte.
    #[error("path {0} contains a NUL byte")]
    Nul(PathBuf),
}

#[derive(Debug)]
enum Op {
    /// `mount --rbind` (or `--bind`), optionally then read-only.
    Bind {
        source: CString,
        target: CString,
        recursive: bool,
        read_only: bool,
    },
    Tmpfs(CString),
    /// Create a directory; an existing one is fine.
    Mkdir(CString),
    /// Create an empty file as a mount point; an existing one is fine.
    Touch(CString),
    Symlink {
        link_target: CString,
        at: CString,
    },
}

/// Everything [`MountPlan::enter`] does, prepared in the parent.
#[derive(Debug)]
pub struct MountPlan {
    root: CString,
    workdir: CString,
    ops: Vec<Op>,
}

fn cstr(p: &Path) -> Result<CString, MountError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| MountError::Nul(p.to_path_buf()))
}

/// `root` + an absolute `path`.
fn under(root: &Path, path: &Path) -> PathBuf {
    match path.strip_prefix("/") {
        Ok(rel) if rel.as_os_str().is_empty() => root.to_path_buf(),
        Ok(rel) => root.join(rel),
        Err(_) => root.join(path),
    }
}

/// An absolute path without `.`/`..`, or an error.
fn normalize(p: &Path) -> Result<PathBuf, MountError> {
    if !p.is_absolute() {
        return Err(MountError::Path(p.to_path_buf()));
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => out.push(s),
            Component::ParentDir | Component::Prefix(_) => return Err(MountError::Path(p.to_path_buf())),
        }
    }
    Ok(out)
}

impl MountPlan {
    /// Plan a namespace rooted at `root` (an empty directory) showing `mounts`, starting in `workdir`.
    pub fn new(root: &Path, mounts: &[Mount], workdir: &Path) -> Result<MountPlan, MountError> {
        let mut ops = vec![Op::Bind {
            source: cstr(Path::new("/"))?,
            target: cstr(root)?,
            recursive: true,
            read_only: false,
        }];
        let mut sorted: Vec<(PathBuf, &Mount)> = mounts
            .iter()
            .map(|m| normalize(&m.target).map(|t| (t, m)))
            .collect::<Result<_, _>>()?;
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut shadowed: BTreeSet<PathBuf> = BTreeSet::new();
        let mut mounted: Vec<PathBuf> = Vec::new();
        for (target, m) in &sorted {
            let is_file = m.source.is_file();
            let inside_volume = mounted.iter().any(|v| target.starts_with(v) && target != v);
            let at = if inside_volume || target.exists() {
                let base = if inside_volume {
                    target.clone()
                } else {
                    std::fs::canonicalize(target).unwrap_or_else(|_| target.clone())
                };
                let at = under(root, &base);
                if inside_volume {
                    push_parents(&mut ops, root, &base, is_file)?;
                }
                at
            } else {
                // The longest existing ancestor (lexically), resolved through symlinks.
                let mut ancestor = target.as_path();
                while !ancestor.exists() {
                    ancestor = ancestor.parent().unwrap_or(Path::new("/"));
                }
                let real = std::fs::canonicalize(ancestor).map_err(|source| MountError::Read {
                    path: ancestor.to_path_buf(),
                    source,
                })?;
                let rest = target.strip_prefix(ancestor).unwrap_or(target);
                let base = real.join(rest);
                if !shadowed.contains(&real) {
                    shadow(&mut ops, root, &real)?;
                    shadowed.insert(real.clone());
                }
                push_parents(&mut ops, root, &base, is_file)?;
                under(root, &base)
            };
            ops.push(Op::Bind {
                source: cstr(&m.source)?,
                target: cstr(&at)?,
                recursive: false,
                read_only: m.read_only,
            });
            mounted.push(target.clone());
        }
        // Hide the root inside itself, so that a walk of `/` does not loop through it.
        ops.push(Op::Tmpfs(cstr(&under(root, root))?));
        Ok(MountPlan {
            root: cstr(root)?,
            workdir: cstr(workdir)?,
            ops,
        })
    }

    /// Enter the planned namespace. Call between `fork` and `exec` (`pre_exec`): system calls only. A
    /// failing step is named on the process's standard error (the container log) before the error returns.
    pub fn enter(&self) -> std::io::Result<()> {
        self.enter_steps().inspect_err(|_| {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            let mut digits = [0u8; 12];
            let mut n = errno.unsigned_abs();
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 || i == 0 {
                    break;
                }
            }
            let failed = FAILED_AT.with(|f| f.get());
            let path: &[u8] = match failed {
                i if i < self.ops.len() => self.ops[i].path().to_bytes(),
                i if i == self.ops.len() => self.root.to_bytes(),
                i if i == self.ops.len() + 1 => self.workdir.to_bytes(),
                _ => b"unshare",
            };
            for part in [
                b"sandbox: entering the mount namespace failed at ".as_slice(),
                path,
                b": errno ".as_slice(),
                &digits[i..],
                b"\n".as_slice(),
            ] {
                // SAFETY: writing a valid buffer to the standard error descriptor.
                unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
            }
        })
    }

    fn enter_steps(&self) -> std::io::Result<()> {
        FAILED_AT.with(|f| f.set(usize::MAX));
        // SAFETY: plain system calls on NUL-terminated strings that outlive the calls.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (index, op) in self.ops.iter().enumerate() {
                FAILED_AT.with(|f| f.set(index));
                match op {
                    Op::Bind {
                        source,
                        target,
                        recursive,
                        read_only,
                    } => {
                        let rec = if *recursive { libc::MS_REC } else { 0 };
                        check(libc::mount(
                            source.as_ptr(),
                            target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | rec,
                            std::ptr::null(),
                        ))?;
                        if *read_only {
                            check(libc::mount(
                                std::ptr::null(),
                                target.as_ptr(),
                                std::ptr::null(),
                                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | rec,
                                std::ptr::null(),
                            ))?;
                        }
                    }
                    Op::Tmpfs(at) => check(libc::mount(
                        c"tmpfs".as_ptr(),
                        at.as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        c"mode=755".as_ptr().cast(),
                    ))?,
                    Op::Mkdir(at) => {
                        if libc::mkdir(at.as_ptr(), 0o755) != 0
                            && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Op::Touch(at) => {
                        let fd = libc::open(
                            at.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        );
                        check(fd)?;
                        libc::close(fd);
                    }
                    Op::Symlink { link_target, at } => {
                        check(libc::symlink(link_target.as_ptr(), at.as_ptr()))?;
                    }
                }
            }
            FAILED_AT.with(|f| f.set(self.ops.len()));
            check(libc::chroot(self.root.as_ptr()))?;
            FAILED_AT.with(|f| f.set(self.ops.len() + 1));
            check(libc::chdir(self.workdir.as_ptr()))?;
        }
        Ok(())
    }
}

std::thread_local! {
    /// The step [`MountPlan::enter`] is at (a `Cell`, so no allocation happens in the child).
    static FAILED_AT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

impl Op {
    /// The path this step works on.
    fn path(&self) -> &CString {
        match self {
            Op::Bind { target, .. } => target,
            Op::Tmpfs(at) | Op::Mkdir(at) | Op::Touch(at) | Op::Symlink { at, .. } => at,
        }
    }
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Create every missing component of `base` under `root` (the last one a file when `is_file`).
fn push_parents(ops: &mut Vec<Op>, root: &Path, base: &Path, is_file: bool) -> Result<(), MountError> {
    let mut cur = PathBuf::from("/");
    let comps: Vec<_> = base.components().skip(1).collect();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let at = cstr(&under(root, &cur))?;
        if is_file && i + 1 == comps.len() {
            ops.push(Op::Touch(at));
        } else {
            ops.push(Op::Mkdir(at));
        }
    }
    Ok(())
}

/// A tmpfs over `root/dir` with every entry of the host's `dir` brought back.
fn shadow(ops: &mut Vec<Op>, root: &Path, dir: &Path) -> Result<(), MountError> {
    let read = |source| MountError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    ops.push(Op::Tmpfs(cstr(&under(root, dir))?));
    for e in entries {
        let at = cstr(&under(root, &e))?;
        let meta = std::fs::symlink_metadata(&e).map_err(|source| MountError::Read {
            path: e.clone(),
            source,
        })?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&e).map_err(|source| MountError::Read {
                path: e.clone(),
                source,
            })?;
            ops.push(Op::Symlink {
                link_target: cstr(&target)?,
                at,
            });
            continue;
        }
        ops.push(if meta.is_dir() {
            Op::Mkdir(at.clone())
        } else {
            Op::Touch(at.clone())
        });
        ops.push(Op::Bind {
            source: cstr(&e)?,
            target: at,
            recursive: true,
            read_only: false,
        });
    }
    Ok(())
}

/// Whether this process may create mount namespaces (probed once with a short-lived child).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", ":"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: only system calls run in the child.
        unsafe {
            cmd.pre_exec(|| {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))
            });
        }
        let ok = cmd.status().is_ok_and(|s| s.success());
        if !ok {
            tracing::warn!(
                "mount namespaces are not available (needs CAP_SYS_ADMIN): pod processes see volumes only \
                 through relative paths in the pod directory"
            );
        }
        ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_relative_or_climbing_mount_path_when_planned_then_rejected() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["data", "/data/../etc"] {
            let m = Mount {
                source: root.path().to_path_buf(),
                target: PathBuf::from(bad),
                read_only: false,
            };
            assert!(matches!(
                MountPlan::new(root.path(), &[m], Path::new("/")),
                Err(MountError::Path(_))
            ));
        }
    }

    #[test]
    fn given_missing_top_level_path_when_planned_then_root_is_shadowed_and_path_created_on_tmpfs() {
        let root = tempfile::tempdir().unwrap();
        let vol = tempfile::tempdir().unwrap();
        let m = Mount {
            source: vol.path().to_path_buf(),
            target: PathBuf::from("/freezeframe-test-missing/data"),
            read_only: true,
        };
        let plan = MountPlan::new(root.path(), &[m], Path::new("/")).unwrap();
        let r = root.path().to_str().unwrap();
        assert!(
            plan.ops
                .iter()
                .any(|o| matches!(o, Op::Tmpfs(p) if p.to_str().unwrap() == r))
        );
        assert!(plan.ops.iter().any(
            |o| matches!(o, Op::Mkdir(p) if p.to_str().unwrap() == format!("{r}/freezeframe-test-missing/data"))
        ));
        assert!(
            plan.ops
                .iter()
                .any(|o| matches!(o, Op::Bind { read_only: true, target, .. }
            if target.to_str().unwrap() == format!("{r}/freezeframe-test-missing/data")))
        );
    }

    #[test]
    fn given_existing_path_when_planned_then_bound_over_without_shadowing() {
        let root = tempfile::tempdir().unwrap();
        let vol = tempfile::tempdir().unwrap();
        let m = Mount {
            source: vol.path().to_path_buf(),
            target: PathBuf::from("/tmp"),
            read_only: false,
        };
        let plan = MountPlan::new(root.path(), &[m], Path::new("/")).unwrap();
        let tmpfs = plan.ops.iter().filter(|o| matches!(o, Op::Tmpfs(_))).count();
        assert_eq!(tmpfs, 1, "only the hiding of the root itself: {:?}", plan.ops);
    }
}

//! Where OpenSSL's read and write functions are in a process: the libssl it
//! maps (`/proc/<pid>/maps`), and each function's file offset from that
//! library's ELF symbol tables (read with `object`), so that no offset is
//! guessed. Only reads `/proc` and files; attaching is `uprobes.rs`'s.
//!
//! Files are opened through `/proc/<pid>/root`, so that a process in
//! another mount namespace (a container) names its own library. What a
//! file holds is resolved once per file (device and inode).
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use crate::events::Direction;

/// How a function hands back the count of bytes it moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Its return value (`SSL_read`, `SSL_write`).
    Count,
    /// Through its fourth argument, a `size_t *`; it returns 1 on success
    /// (`SSL_read_ex`, `SSL_write_ex`, OpenSSL 1.1.1+; CPython 3.11 calls these).
    Ex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub name: &'static str,
    pub direction: Direction,
    pub form: Form,
}

/// Every function hooked: together they are all the ways an application
/// hands plaintext to OpenSSL or takes it back.
pub const FUNCTIONS: [Function; 4] = [
    Function {
        name: "SSL_read",
        direction: Direction::Recv,
        form: Form::Count,
    },
    Function {
        name: "SSL_read_ex",
        direction: Direction::Recv,
        form: Form::Ex,
    },
    Function {
        name: "SSL_write",
        direction: Direction::Send,
        form: Form::Count,
    },
    Function {
        name: "SSL_write_ex",
        direction: Direction::Send,
        form: Form::Ex,
    },
];

/// A libssl as one process maps it, and where its functions are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Library {
    /// The file to attach to (through `/proc/<pid>/root`).
    pub path: PathBuf,
    /// The path as the process's maps give it, for messages.
    pub mapped: String,
    /// Each function the library defines, with its offset in the file.
    pub functions: Vec<(Function, u64)>,
    /// Those it does not define.
    pub missing: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenSslError {
    #[error(
        "maps no libssl.so: HTTPS it terminates or calls is not seen (plain HTTP is){}",
        .static_in.as_ref().map(|exe| format!("; {exe} defines SSL_write itself (OpenSSL or BoringSSL linked statically), which is not hooked")).unwrap_or_default()
    )]
    NoLibrary {
        /// The executable, when it defines the functions itself.
        static_in: Option<String>,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file the tracer can read: {source}")]
    Elf {
        path: String,
        #[source]
        source: object::Error,
    },
    #[error(
        "{path} defines none of {wanted} (stripped, or not OpenSSL): its HTTPS is not seen (plain HTTP is)"
    )]
    MissingSymbols { path: String, wanted: String },
}

/// Each function a file defines, with its offset in the file.
type Offsets = Arc<Vec<(Function, u64)>>;

/// What files were found to hold, by device and inode.
#[derive(Default)]
pub struct Finder {
    libraries: HashMap<(u64, u64), Offsets>,
    executables: HashMap<(u64, u64), bool>,
}

impl Finder {
    /// The libssl `pid` maps and its functions' offsets.
    pub fn find(&mut self, pid: u32) -> Result<Library, OpenSslError> {
        let maps_path = format!("/proc/{pid}/maps");
        let maps = fs::read_to_string(&maps_path).map_err(|source| OpenSslError::Read {
            path: maps_path,
            source,
        })?;
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let Some(mapped) = mapped_libssl(&maps) else {
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
            let static_in = exe.filter(|exe| self.defines_ssl_write(&within(&root, exe)));
            return Err(OpenSslError::NoLibrary {
                static_in: static_in.map(|exe| exe.display().to_string()),
            });
        };
        let path = within(&root, Path::new(mapped));
        let read_error = |source| OpenSslError::Read {
            path: mapped.to_owned(),
            source,
        };
        let identity = identity(&path).map_err(read_error)?;
        let functions = match self.libraries.get(&identity) {
            Some(functions) => functions.clone(),
            None => {
                let bytes = fs::read(&path).map_err(read_error)?;
                let functions = Arc::new(offsets(&bytes).map_err(|source| OpenSslError::Elf {
                    path: mapped.to_owned(),
                    source,
                })?);
                self.libraries.insert(identity, functions.clone());
                functions
            }
        };
        let reads = functions
            .iter()
            .any(|(f, _)| f.direction == Direction::Recv);
        let writes = functions
            .iter()
            .any(|(f, _)| f.direction == Direction::Send);
        if !reads || !writes {
            return Err(OpenSslError::MissingSymbols {
                path: mapped.to_owned(),
                wanted: FUNCTIONS.map(|f| f.name).join(", "),
            });
        }
        let missing = FUNCTIONS
            .iter()
            .filter(|wanted| !functions.iter().any(|(f, _)| f == *wanted))
            .map(|f| f.name)
            .collect();
        Ok(Library {
            path,
            mapped: mapped.to_owned(),
            functions: functions.to_vec(),
            missing,
        })
    }

    /// Whether the executable at `path` defines `SSL_write` itself.
    fn defines_ssl_write(&mut self, path: &Path) -> bool {
        let Ok(identity) = identity(path) else {
            return false;
        };
        *self.executables.entry(identity).or_insert_with(|| {
            fs::read(path).ok().is_some_and(|bytes| {
                offsets(&bytes)
                    .is_ok_and(|functions| functions.iter().any(|(f, _)| f.name == "SSL_write"))
            })
        })
    }
}

/// `path` of a process, seen through its root directory.
fn within(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    let metadata = fs::metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
}

/// The first file mapped executable whose name is `libssl.so` or
/// `libssl.so.<version>`.
pub fn mapped_libssl(maps: &str) -> Option<&str> {
    maps.lines().find_map(|line| {
        // address perms offset dev inode path
        let mut fields = line.split_whitespace();
        let perms = fields.nth(1)?;
        let path = fields.nth(3)?;
        let name = path.rsplit('/').next()?;
        let is_libssl = name == "libssl.so" || name.starts_with("libssl.so.");
        (is_libssl && perms.contains('x') && path.starts_with('/')).then_some(path)
    })
}

/// The file offset of each of [`FUNCTIONS`] the ELF file `bytes` defines,
/// from its dynamic symbols (kept by `strip`) or else its full table.
pub fn offsets(bytes: &[u8]) -> Result<Vec<(Function, u64)>, object::Error> {
    let file = object::File::parse(bytes)?;
    let mut found = Vec::new();
    for function in FUNCTIONS {
        let symbol = file.dynamic_symbols().chain(file.symbols()).find(|symbol| {
            symbol.is_definition()
                && symbol.kind() == object::SymbolKind::Text
                && symbol.name() == Ok(function.name)
        });
        let Some(symbol) = symbol else {
            continue;
        };
        let Some(index) = symbol.section_index() else {
            continue;
        };
        let section = file.section_by_index(index)?;
        let Some((section_offset, _)) = section.file_range() else {
            continue;
        };
        let offset = symbol
            .address()
            .checked_sub(section.address())
            .and_then(|within| within.checked_add(section_offset));
        if let Some(offset) = offset {
            found.push((function, offset));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libssl_among_the_maps() {
        let maps = "\
7f0000000000-7f0000001000 r--p 00000000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000003000-7f0000004000 r-xp 00001000 08:01 99 /usr/lib/x86_64-linux-gnu/libssl3-helper.so
7ffd00000000-7ffd00001000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            mapped_libssl(maps),
            Some("/usr/lib/x86_64-linux-gnu/libssl.so.3")
        );
        assert_eq!(
            mapped_libssl("7f0-7f1 r-xp 0 08:01 1 /opt/libcrypto.so.3\n"),
            None
        );
        assert_eq!(
            mapped_libssl("7f0-7f1 r-xp 0 08:01 1 /opt/ssl/libssl.so\n"),
            Some("/opt/ssl/libssl.so")
        );
    }

    /// The offsets match the symbol table `nm` prints for this file: in
    /// a shared library text is mapped at its file offset, so offsets
    /// equal the symbols' addresses.
    #[test]
    fn resolves_the_system_libssl() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let Ok(bytes) = fs::read(path) else {
            eprintln!("no {} here: skipped", path.display());
            return;
        };
        let found = offsets(&bytes).expect("an ELF file");
        let names: Vec<&str> = found.iter().map(|(f, _)| f.name).collect();
        assert_eq!(names, FUNCTIONS.map(|f| f.name));
        let file = object::File::parse(&bytes[..]).expect("ELF");
        for (function, offset) in found {
            let symbol = file
                .dynamic_symbols()
                .find(|s| s.name() == Ok(function.name))
                .expect("symbol");
            let section = file
                .section_by_index(symbol.section_index().unwrap())
                .unwrap();
            let (file_offset, _) = section.file_range().unwrap();
            assert_eq!(offset, symbol.address() - section.address() + file_offset);
            assert_ne!(offset, 0);
        }
    }

    #[test]
    fn a_library_without_the_functions_defines_none() {
        let own = fs::read("/proc/self/exe").expect("own executable");
        assert!(offsets(&own).expect("ELF").is_empty());
        assert!(offsets(b"not an ELF file").is_err());
    }
}

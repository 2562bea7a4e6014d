//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just
//! enough to find the byte offset of a struct member, so that no kernel
//! struct offset is ever assumed. Format: Documentation/bpf/btf.rst.
use std::{collections::HashMap, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read kernel BTF at {path}: {source} (this kernel was built without CONFIG_DEBUG_INFO_BTF)"
    )]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF struct {structure} has no member {member}")]
    NoMember { structure: String, member: String },
    #[error("kernel BTF has no function {0}")]
    NoFunction(String),
    #[error("kernel BTF function {function} has no parameter {param}")]
    NoParam { function: String, param: String },
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;

/// A struct or union member: name (empty for an anonymous one), type id,
/// byte offset.
struct Member {
    name: String,
    type_id: u32,
    offset: u32,
}

/// The members of every struct and union, by type id, and the ids of the
/// named structs. Anonymous members are searched through, as C does. Also
/// the parameter names of every function.
pub struct Btf {
    members: HashMap<u32, Vec<Member>>,
    structs: HashMap<String, u32>,
    /// Function name → its prototype's type id.
    functions: HashMap<String, u32>,
    /// Prototype type id → parameter names.
    prototypes: HashMap<u32, Vec<String>>,
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let reader = Reader { bytes };
        if reader.u16(0)? != MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let header_len = reader.u32(4)? as usize;
        let types_start = header_len + reader.u32(8)? as usize;
        let types_end = types_start + reader.u32(12)? as usize;
        let strings_start = header_len + reader.u32(16)? as usize;
        let strings_end = strings_start + reader.u32(20)? as usize;
        let strings = bytes
            .get(strings_start..strings_end)
            .ok_or(BtfError::Malformed("string section out of bounds"))?;
        let name = |offset: u32| -> &str {
            let tail = strings.get(offset as usize..).unwrap_or_default();
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            std::str::from_utf8(&tail[..end]).unwrap_or_default()
        };

        let mut members_by_type = HashMap::new();
        let mut structs = HashMap::new();
        let mut functions = HashMap::new();
        let mut prototypes = HashMap::new();
        let mut type_id = 0u32;
        let mut at = types_start;
        while at < types_end {
            type_id += 1;
            let name_off = reader.u32(at)?;
            let info = reader.u32(at + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let bitfield_offsets = info >> 31 == 1;
            let size_or_type = reader.u32(at + 8)?;
            at += 12;
            if kind == KIND_FUNC {
                functions.insert(name(name_off).to_owned(), size_or_type);
            }
            if kind == KIND_FUNC_PROTO {
                let params = (0..vlen)
                    .map(|i| Ok(name(reader.u32(at + i * 8)?).to_owned()))
                    .collect::<Result<_, BtfError>>()?;
                prototypes.insert(type_id, params);
            }
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut members = Vec::with_capacity(vlen);
                for i in 0..vlen {
                    let member = at + i * 12;
                    let raw_offset = reader.u32(member + 8)?;
                    let bits = if bitfield_offsets {
                        raw_offset & 0x00ff_ffff
                    } else {
                        raw_offset
                    };
                    members.push(Member {
                        name: name(reader.u32(member)?).to_owned(),
                        type_id: reader.u32(member + 4)?,
                        offset: bits / 8,
                    });
                }
                members_by_type.insert(type_id, members);
                let struct_name = name(name_off);
                if kind == KIND_STRUCT && !struct_name.is_empty() {
                    structs.entry(struct_name.to_owned()).or_insert(type_id);
                }
            }
            at += trailing_len(kind, vlen)?;
        }
        Ok(Self {
            members: members_by_type,
            structs,
            functions,
            prototypes,
        })
    }

    /// The parameter names of kernel function `function`, in order.
    pub fn params(&self, function: &str) -> Result<&[String], BtfError> {
        self.functions
            .get(function)
            .and_then(|proto| self.prototypes.get(proto))
            .map(Vec::as_slice)
            .ok_or_else(|| BtfError::NoFunction(function.to_owned()))
    }

    /// 0-based position of parameter `param` of kernel function `function`.
    pub fn param_index(&self, function: &str, param: &str) -> Result<u32, BtfError> {
        self.params(function)?
            .iter()
            .position(|name| name == param)
            .map(|index| index as u32)
            .ok_or_else(|| BtfError::NoParam {
                function: function.to_owned(),
                param: param.to_owned(),
            })
    }

    /// Byte offset of `member` in `struct structure`.
    pub fn member_offset(&self, structure: &str, member: &str) -> Result<u32, BtfError> {
        let id = self
            .structs
            .get(structure)
            .ok_or_else(|| BtfError::NoStruct(structure.to_owned()))?;
        self.find(*id, member).ok_or_else(|| BtfError::NoMember {
            structure: structure.to_owned(),
            member: member.to_owned(),
        })
    }

    /// `member` in type `id`, or inside one of its anonymous members.
    fn find(&self, id: u32, member: &str) -> Option<u32> {
        let members = self.members.get(&id)?;
        members
            .iter()
            .find(|m| m.name == member)
            .map(|m| m.offset)
            .or_else(|| {
                members
                    .iter()
                    .filter(|m| m.name.is_empty())
                    .find_map(|m| Some(m.offset + self.find(m.type_id, member)?))
            })
    }
}

/// Bytes that follow the common 12-byte type record, by kind.
fn trailing_len(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        1 | 14 | 17 => 4,                            // INT, VAR, DECL_TAG
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        3 => 12,                                     // ARRAY
        4 | 5 | 15 | 19 => 12 * vlen,                // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => 8 * vlen,                          // ENUM, FUNC_PROTO
        _ => return Err(BtfError::Malformed("unknown type kind")),
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn u16(&self, at: usize) -> Result<u16, BtfError> {
        self.array(at).map(u16::from_le_bytes)
    }

    fn u32(&self, at: usize) -> Result<u32, BtfError> {
        self.array(at).map(u32::from_le_bytes)
    }

    fn array<const N: usize>(&self, at: usize) -> Result<[u8; N], BtfError> {
        self.bytes
            .get(at..at + N)
            .and_then(|slice| slice.try_into().ok())
            .ok_or(BtfError::Malformed("truncated"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(matches!(Btf::parse(b"nope"), Err(BtfError::Malformed(_))));
        assert!(matches!(
            Btf::parse(&[0u8; 64]),
            Err(BtfError::Malformed(_))
        ));
    }

    #[test]
    fn reads_the_running_kernel() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: this kernel exposes no BTF");
            return;
        };
        // `struct list_head { next; prev; }` is the same on every kernel.
        assert_eq!(btf.member_offset("list_head", "next").unwrap(), 0);
        assert_eq!(btf.member_offset("list_head", "prev").unwrap(), 8);
        assert!(btf.member_offset("list_head", "nope").is_err());
        // Members of anonymous unions and structs are found through them.
        let daddr = btf.member_offset("sock_common", "skc_daddr").unwrap();
        let saddr = btf.member_offset("sock_common", "skc_rcv_saddr").unwrap();
        assert_eq!(saddr, daddr + 4);
        // `tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)` since 2.6.
        assert_eq!(btf.param_index("tcp_sendmsg", "size").unwrap(), 2);
        assert!(btf.param_index("tcp_sendmsg", "nope").is_err());
    }
}

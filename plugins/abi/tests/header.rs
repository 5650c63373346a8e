//! `include/allot_policy.h` and the Rust `#[repr(C)]` mirror describe the same ABI: every struct has the same
//! fields in the same order, at the same offsets, with the same size and alignment, and the constants agree.
//!
//! The C side is measured by the C compiler itself: the test writes a small program that includes the header
//! and prints `sizeof`, `_Alignof` and `offsetof` of everything, builds it with `$CC` (default `cc`) and runs
//! it. The field lists come from the header's text, so a field added on one side only fails the test.

use allot_policy_abi as abi;
use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};
use std::path::Path;
use std::process::Command;

/// One struct of the ABI as Rust lays it out: C name, size, alignment, fields with their offsets and sizes.
struct Layout {
    name: &'static str,
    size: usize,
    align: usize,
    fields: Vec<(&'static str, usize, usize)>,
}

/// The size of the field that `get` reads.
fn field_size<T, F>(_get: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! layout {
    ($c:literal, $t:ty { $($f:ident),* $(,)? }) => {
        Layout {
            name: $c,
            size: size_of::<$t>(),
            align: align_of::<$t>(),
            fields: vec![$((
                stringify!($f),
                offset_of!($t, $f),
                field_size(|s: &$t| &s.$f),
            )),*],
        }
    };
}

fn rust_layouts() -> Vec<Layout> {
    vec![
        layout!("allot_str", abi::AllotStr { ptr, len }),
        layout!(
            "allot_reservation",
            abi::AllotReservation { role, available }
        ),
        layout!(
            "allot_agent",
            abi::AllotAgent {
                id,
                total,
                available,
                n_reserved,
                reserved
            }
        ),
        layout!(
            "allot_role",
            abi::AllotRole {
                name,
                weight,
                quota_limit,
                allocation
            }
        ),
        layout!(
            "allot_framework",
            abi::AllotFramework {
                id,
                role,
                priority,
                allocations,
                allocation,
                n_filtered,
                filtered
            }
        ),
        layout!(
            "allot_snapshot",
            abi::AllotSnapshot {
                abi_version,
                n_kinds,
                kinds,
                total,
                n_agents,
                agents,
                n_roles,
                roles,
                n_frameworks,
                frameworks,
                quota_guarantees,
                starved_seconds,
                preemption,
                n_tasks,
                tasks
            }
        ),
        layout!(
            "allot_preemption",
            abi::AllotPreemption {
                grace_seconds,
                min_runtime_seconds
            }
        ),
        layout!(
            "allot_task",
            abi::AllotTask {
                id,
                framework,
                agent,
                role,
                priority,
                resources,
                running_seconds
            }
        ),
        layout!("allot_revocation", abi::AllotRevocation { task, message }),
        layout!(
            "allot_revocations",
            abi::AllotRevocations {
                capacity,
                len,
                revocations
            }
        ),
        layout!(
            "allot_grant",
            abi::AllotGrant {
                framework,
                agent,
                resources,
                reserved
            }
        ),
        layout!(
            "allot_grants",
            abi::AllotGrants {
                capacity,
                len,
                grants
            }
        ),
    ]
}

/// The constants of the header and their Rust values.
fn rust_constants() -> Vec<(&'static str, i64)> {
    vec![
        ("ALLOT_POLICY_ABI_VERSION", abi::ABI_VERSION.into()),
        ("ALLOT_POLICY_MESSAGE_BYTES", abi::MESSAGE_BYTES.into()),
        ("ALLOT_POLICY_OK", abi::OK.into()),
        ("ALLOT_POLICY_ERR_INPUT", abi::ERR_INPUT.into()),
        ("ALLOT_POLICY_ERR_CAPACITY", abi::ERR_CAPACITY.into()),
        ("ALLOT_POLICY_ERR_PANIC", abi::ERR_PANIC.into()),
    ]
}

/// Every `typedef struct NAME { ... } NAME;` of the header with its field names, in order.
fn header_structs(header: &str) -> BTreeMap<String, Vec<String>> {
    // Comments out, so that their words are not taken for fields.
    let mut text = String::new();
    let mut rest = header;
    while let Some(start) = rest.find("/*") {
        text.push_str(&rest[..start]);
        rest = rest[start..]
            .find("*/")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    text.push_str(rest);
    let text: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeMap::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("typedef struct ") {
        rest = &rest[at + "typedef struct ".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let (open, close) = (rest.find('{').expect("{"), rest.find('}').expect("}"));
        let fields = rest[open + 1..close]
            .split(';')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| {
                d.rsplit(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .expect("a field name")
                    .to_string()
            })
            .collect();
        out.insert(name, fields);
        rest = &rest[close..];
    }
    out
}

#[test]
fn the_c_header_and_the_rust_mirror_agree() {
    let header_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/allot_policy.h");
    let header = std::fs::read_to_string(&header_path).expect("the header");
    let structs = header_structs(&header);
    let rust = rust_layouts();
    let names: Vec<&str> = rust.iter().map(|l| l.name).collect();
    assert_eq!(
        structs.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut n = names.clone();
            n.sort();
            n
        },
        "the header and the Rust mirror define the same structs"
    );
    for l in &rust {
        let fields: Vec<&str> = l.fields.iter().map(|(f, _, _)| *f).collect();
        assert_eq!(
            structs[l.name], fields,
            "{}: the same fields in the same order",
            l.name
        );
    }

    // The C compiler's view of the same structs.
    let dir = tempfile_dir();
    let mut program = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"allot_policy.h\"\nint main(void) {\n",
    );
    for l in &rust {
        let n = l.name;
        program += &format!(
            "  printf(\"size {n} %zu\\n\", sizeof({n}));\n  printf(\"align {n} %zu\\n\", _Alignof({n}));\n"
        );
        for (f, _, _) in &l.fields {
            program += &format!(
                "  printf(\"offset {n}.{f} %zu\\n\", offsetof({n}, {f}));\n  printf(\"sizeof {n}.{f} %zu\\n\", sizeof((({n} *)0)->{f}));\n"
            );
        }
    }
    for (c, _) in rust_constants() {
        program += &format!("  printf(\"const {c} %lld\\n\", (long long)({c}));\n");
    }
    program += "  return 0;\n}\n";
    let src = dir.join("layout.c");
    let bin = dir.join("layout");
    std::fs::write(&src, program).expect("write the C program");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(header_path.parent().expect("include dir"))
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
    assert!(
        built.status.success(),
        "the header does not compile: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let out = Command::new(&bin).output().expect("run the layout program");
    let c: BTreeMap<String, i64> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("key value");
            (key.to_string(), value.parse().expect("a number"))
        })
        .collect();
    for l in &rust {
        assert_eq!(
            c[&format!("size {}", l.name)],
            l.size as i64,
            "sizeof {}",
            l.name
        );
        assert_eq!(
            c[&format!("align {}", l.name)],
            l.align as i64,
            "alignof {}",
            l.name
        );
        for (f, off, size) in &l.fields {
            assert_eq!(
                c[&format!("offset {}.{f}", l.name)],
                *off as i64,
                "offsetof({}, {f})",
                l.name
            );
            assert_eq!(
                c[&format!("sizeof {}.{f}", l.name)],
                *size as i64,
                "sizeof {}.{f}",
                l.name
            );
        }
    }
    for (name, value) in rust_constants() {
        assert_eq!(c[&format!("const {name}")], value, "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("allot-abi-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

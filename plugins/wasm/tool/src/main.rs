//! `allot-wasm-tool`: the two build steps of a WASM policy that need the component-model tooling, as one
//! small binary built from crates.io (no `wasm-tools` or `wit-bindgen` CLI to install).
//!
//! ```text
//! allot-wasm-tool c-bindings WIT_DIR OUT_DIR   # policy.h, policy.c, policy_component_type.o for world `policy`
//! allot-wasm-tool component CORE.wasm OUT.wasm # wrap a core module (with its component-type section) into a component
//! ```
//! Exit status 2 for a usage error, 1 for a failed step (with the reason on stderr).

use anyhow::{Context, Result, bail};
use std::path::Path;

fn c_bindings(wit: &Path, out: &Path) -> Result<()> {
    let mut resolve = wit_parser::Resolve::default();
    let (pkg, _) = resolve
        .push_dir(wit)
        .with_context(|| format!("reading the WIT package in {}", wit.display()))?;
    let world = resolve.select_world(&[pkg], Some("policy"))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)?;
    std::fs::create_dir_all(out)?;
    for (name, bytes) in files.iter() {
        let path = out.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

fn component(core: &Path, out: &Path) -> Result<()> {
    let bytes = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&bytes)
        .with_context(|| format!("{} has no usable component-type section", core.display()))?
        .encode()
        .with_context(|| format!("encoding {} as a component", core.display()))?;
    std::fs::write(out, component).with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = || -> Result<()> {
        match args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["c-bindings", wit, out] => c_bindings(Path::new(wit), Path::new(out)),
            ["component", core, out] => component(Path::new(core), Path::new(out)),
            _ => bail!("usage"),
        }
    };
    if let Err(e) = run() {
        if e.to_string() == "usage" {
            eprintln!(
                "usage: allot-wasm-tool c-bindings WIT_DIR OUT_DIR | component CORE.wasm OUT.wasm"
            );
            std::process::exit(2);
        }
        eprintln!("allot-wasm-tool: {e:#}");
        std::process::exit(1);
    }
}

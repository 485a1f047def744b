//! `volt gen-docs --out DIR` (hidden): man pages and shell completions rendered from the
//! clap definitions the binaries parse, for the packages (`scripts/package`). Writes
//! `DIR/man/volt.1` and one `volt-<sub>.1` per subcommand, `DIR/man/volt-vmm.8`, and
//! `DIR/completions/{volt.bash,_volt,volt.fish}` (+ the same for volt-vmm).

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use super::{Opts, Outcome};
use crate::vmm::cli::VmmCli;

/// The clap commands documented, with their man section.
fn commands() -> Vec<(clap::Command, &'static str)> {
    vec![(Opts::command(), "1"), (VmmCli::command(), "8")]
}

pub fn exec(out: &Path) -> anyhow::Result<Outcome> {
    let man = out.join("man");
    let comp = out.join("completions");
    for d in [&man, &comp] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    for (cmd, section) in commands() {
        write_man(cmd.clone(), section, &man)?;
        let name = cmd.get_name().to_string();
        for (shell, file) in [
            (Shell::Bash, name.clone()),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let path = comp.join(shell.to_string()).join(file);
            std::fs::create_dir_all(path.parent().unwrap_or(&comp))?;
            let mut f = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            if name == "volt" {
                // `volt` completes names from the configuration directories: its scripts call
                // back into the installed binary (`COMPLETE=<shell> volt -- <words>`).
                write_dynamic(shell, &name, &mut f)?;
            } else {
                clap_complete::generate(shell, &mut cmd.clone(), &name, &mut f);
            }
        }
    }
    Ok(Outcome::Ok)
}

/// The registration script of `shell` for the dynamic completions of `name`.
fn write_dynamic(shell: Shell, name: &str, f: &mut std::fs::File) -> anyhow::Result<()> {
    use clap_complete::env::{Bash, EnvCompleter, Fish, Zsh};
    let bin = format!("/usr/bin/{name}");
    let completer: &dyn EnvCompleter = match shell {
        Shell::Bash => &Bash,
        Shell::Zsh => &Zsh,
        _ => &Fish,
    };
    completer.write_registration("COMPLETE", name, name, &bin, f)?;
    Ok(())
}

/// The command's page and one per (non-hidden) subcommand, `volt-vm-list.1` style.
fn write_man(cmd: clap::Command, section: &str, dir: &Path) -> anyhow::Result<()> {
    fn walk(cmd: clap::Command, section: &str, dir: &Path) -> anyhow::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, section, dir)?;
        }
        let man = clap_mangen::Man::new(cmd)
            .section(section)
            .manual("Volt Manual")
            .source(format!("volt {}", env!("CARGO_PKG_VERSION")));
        let path = dir.join(man.get_filename());
        let page = man
            .get_filename()
            .rsplit_once('.')
            .map_or_else(String::new, |(stem, _)| stem.to_string());
        let mut buf = Vec::new();
        man.render(&mut buf)?;
        buf.extend_from_slice(super::manual::render(&super::manual::extra(&page)).as_bytes());
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    walk(cmd, section, dir)
}

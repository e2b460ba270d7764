//! flotctl: the operator's command line, one file per verb.
//!
//! Columns, field names and the short `id.../IP` machine form follow fleetctl, so scripts
//! written for it keep working. Every failure reaches [`run`]'s caller as one error, printed once
//! as a one-line reason.

/// Writes one line to standard output, returning write errors (a closed pipe among them) to
/// the caller instead of panicking as `println!` does.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod cat;
mod journal;
mod lifecycle;
mod list;
mod status;
mod verify;
mod view;
mod wait;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use globset::Glob;

use crate::store::Store;
use crate::unit::{self, UnitName};

pub use view::View;

/// The flotilla command line.
#[derive(Parser, Debug)]
#[command(name = "flotctl", version, about = "Operate a flotilla cluster")]
pub struct Cli {
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        global = true,
        env = "FLOTCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Key prefix in etcd.
    #[arg(long, global = true, env = "FLOTCTL_PREFIX", default_value = "/flotilla")]
    pub prefix: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Checks what clap cannot, before anything is sent: a usage error, which `main` reports
    /// as clap's own (exit status 2).
    ///
    /// # Errors
    ///
    /// The first argument that is wrong, with what was expected instead.
    pub fn check(&self) -> Result<(), clap::Error> {
        let fields = match &self.command {
            Command::ListUnits(args) => list::check_fields(args, &list::UNIT_FIELDS),
            Command::ListUnitFiles(args) => list::check_fields(args, &list::UNIT_FILE_FIELDS),
            Command::ListMachines(args) => list::check_fields(args, &list::MACHINE_FIELDS),
            Command::Journal(args) if args.lines == 0 && !args.follow => {
                Err("0 is only for --follow, which then prints the new lines alone".to_string())
            }
            _ => Ok(()),
        };
        // The usage shown is the verb's own, as clap shows for the errors it finds itself.
        let usage = |message: String| {
            let mut command = <Cli as clap::CommandFactory>::command();
            command.build();
            let verb = self.command.name();
            match command.find_subcommand_mut(verb) {
                Some(verb) => verb.error(clap::error::ErrorKind::InvalidValue, message),
                None => command.error(clap::error::ErrorKind::InvalidValue, message),
            }
        };
        let offline = matches!(self.command, Command::Version | Command::Verify(_));
        if let Some(problem) = crate::keyspace::prefix_problem(&self.prefix).filter(|_| !offline) {
            return Err(usage(format!("--prefix {:?}: {problem}", self.prefix)));
        }
        if let Some(problem) = self
            .endpoints
            .iter()
            .find_map(|e| crate::store::endpoint_problem(e))
            .filter(|_| !offline)
        {
            return Err(usage(format!(
                "--endpoints: {problem} (give URLs such as http://10.0.0.1:2379, comma-separated)"
            )));
        }
        fields.map_err(|message| match self.command {
            Command::Journal(_) => usage(format!("--lines: {message}")),
            _ => usage(format!("--fields: {message}")),
        })
    }
}

/// The verbs.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Store unit files in the cluster without placing them.
    Submit(SubmitArgs),
    /// Place units on hosts and load them into systemd, without starting them.
    Load(ChangeArgs),
    /// Place units and start them.
    Start(ChangeArgs),
    /// Stop units, leaving them loaded on their hosts.
    Stop(ChangeArgs),
    /// Stop units, then start them again.
    Restart(ChangeArgs),
    /// Stop units and remove them from their hosts, keeping their files in the cluster.
    Unload(ChangeArgs),
    /// Stop units and remove them from the cluster.
    Destroy(ChangeArgs),
    /// List the units placed on hosts and what systemd reports of them.
    ListUnits(ListArgs),
    /// List the unit files in the cluster with their desired and current state.
    ListUnitFiles(ListArgs),
    /// List the hosts of the cluster.
    ListMachines(ListArgs),
    /// Print a unit file as stored.
    Cat(NamesArgs),
    /// Show the reported state of units and their recent transitions.
    Status(NamesArgs),
    /// Print the last lines of a unit's journal, read on the host that runs it.
    Journal(JournalArgs),
    /// Check unit files offline, as submit would.
    Verify(VerifyArgs),
    /// Print flotctl's version.
    Version,
}

/// Arguments of `submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// Unit files to store.
    #[arg(required = true)]
    pub files: Vec<String>,
    /// Update units that exist with a different file.
    #[arg(long)]
    pub replace: bool,
}

/// Arguments of the verbs that change desired state.
#[derive(Args, Debug)]
pub struct ChangeArgs {
    /// Unit names, globs, or unit files (which are submitted first).
    #[arg(required = true)]
    pub units: Vec<String>,
    /// Update units that exist with a different file.
    #[arg(long)]
    pub replace: bool,
    /// Return once the change is stored, without waiting for the cluster.
    #[arg(long)]
    pub no_block: bool,
    /// How long to wait for the cluster to report the new state.
    #[arg(long, default_value = "60s", value_parser = parse_seconds)]
    pub timeout: Duration,
}

/// Arguments of the verbs that take only names.
#[derive(Args, Debug)]
pub struct NamesArgs {
    /// Unit names or globs.
    #[arg(required = true)]
    pub units: Vec<String>,
    /// Print as JSON.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Arguments of `journal`.
#[derive(Args, Debug)]
pub struct JournalArgs {
    /// The unit.
    pub unit: String,
    /// How many of the last lines to print (0 with --follow: only the new ones).
    #[arg(short = 'n', long, default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::journal::MAX_LINES)))]
    pub lines: u32,
    /// Go on printing lines as they are written, until interrupted (Ctrl-C).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How long to wait for the host to answer.
    #[arg(long, default_value = "10s", value_parser = parse_seconds)]
    pub timeout: Duration,
}

/// Arguments of `verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Unit files to check.
    #[arg(required = true)]
    pub files: Vec<String>,
}

/// Arguments of the listings.
#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// Omit the header line.
    #[arg(long)]
    pub no_legend: bool,
    /// Do not shorten machine ids and hashes.
    #[arg(long)]
    pub full: bool,
    /// Columns to print, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub fields: Option<Vec<String>>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// How listings are printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One JSON array of objects.
    Json,
}

/// Runs one flotctl command.
///
/// # Errors
///
/// Any failure, as one error whose chain reads as a single line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Files named on the command line are read and checked before etcd is asked: a bad one is
    // the caller's to fix whatever state etcd is in.
    let files = match &cli.command {
        Command::Submit(args) => read_unit_files(&args.files)?,
        Command::Load(args)
        | Command::Start(args)
        | Command::Stop(args)
        | Command::Restart(args)
        | Command::Unload(args) => {
            let paths: Vec<String> = args.units.iter().filter(|a| is_path(a)).cloned().collect();
            read_unit_files(&paths)?
        }
        _ => Vec::new(),
    };
    let connect = || Store::connect(&cli.endpoints, &cli.prefix);
    match cli.command {
        Command::Version => {
            outln!("flotctl version {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Verify(args) => verify::verify(&args),
        Command::Submit(args) => lifecycle::submit(&connect().await?, files, args.replace).await,
        Command::Load(args) => lifecycle::load(&connect().await?, &args, files).await,
        Command::Start(args) => lifecycle::start(&connect().await?, &args, files).await,
        Command::Stop(args) => lifecycle::stop(&connect().await?, &args, files).await,
        Command::Restart(args) => lifecycle::restart(&connect().await?, &args, files).await,
        Command::Unload(args) => lifecycle::unload(&connect().await?, &args, files).await,
        Command::Destroy(args) => lifecycle::destroy(&connect().await?, &args).await,
        Command::ListUnits(args) => list::list_units(&connect().await?, &args).await,
        Command::ListUnitFiles(args) => list::list_unit_files(&connect().await?, &args).await,
        Command::ListMachines(args) => list::list_machines(&connect().await?, &args).await,
        Command::Cat(args) => cat::cat(&connect().await?, &args).await,
        Command::Status(args) => status::status(&connect().await?, &args).await,
        Command::Journal(args) => journal::journal(&connect().await?, &args).await,
    }
}

impl Command {
    /// The verb as typed on the command line.
    fn name(&self) -> &'static str {
        match self {
            Command::Submit(_) => "submit",
            Command::Load(_) => "load",
            Command::Start(_) => "start",
            Command::Stop(_) => "stop",
            Command::Restart(_) => "restart",
            Command::Unload(_) => "unload",
            Command::Destroy(_) => "destroy",
            Command::ListUnits(_) => "list-units",
            Command::ListUnitFiles(_) => "list-unit-files",
            Command::ListMachines(_) => "list-machines",
            Command::Cat(_) => "cat",
            Command::Status(_) => "status",
            Command::Journal(_) => "journal",
            Command::Verify(_) => "verify",
            Command::Version => "version",
        }
    }
}

/// A unit file read from disk and checked as submit checks it.
pub(crate) struct LocalFile {
    pub name: UnitName,
    pub text: String,
    /// The template an instance was made from, when it had no file of its own.
    pub template: Option<(UnitName, String)>,
}

pub use crate::unit::parse_seconds;

/// The largest unit file accepted, as the parser enforces it.
const MAX_FILE_SIZE: u64 = 1 << 20;

/// Whether a command-line argument names a file rather than a unit in the cluster.
fn is_path(arg: &str) -> bool {
    arg.contains('/') || Path::new(arg).is_file()
}

/// Reads and checks every file of `paths`; refuses them all, naming each bad one, if any is bad.
pub(crate) fn read_unit_files(paths: &[String]) -> anyhow::Result<Vec<LocalFile>> {
    let mut copies = Copies::default();
    let (files, errors): (Vec<_>, Vec<_>) = paths
        .iter()
        .map(|p| read_unit_file(p).and_then(|file| copies.check(p, file)))
        .partition(Result::is_ok);
    let mut errors: Vec<anyhow::Error> = errors.into_iter().filter_map(Result::err).collect();
    match errors.len() {
        0 => Ok(files.into_iter().filter_map(Result::ok).collect()),
        1 => Err(errors.remove(0)),
        n => {
            let each: Vec<String> = errors.iter().map(|e| format!("  {e:#}")).collect();
            bail!("{n} unit files are refused, so none is stored:\n{}", each.join("\n"))
        }
    }
}

/// The files of one command line by unit name, to refuse a unit given twice with different
/// files (`a/web.service` and `b/web.service`), as submit would.
#[derive(Default)]
pub(crate) struct Copies<'a> {
    first: BTreeMap<UnitName, (&'a str, String)>,
}

impl<'a> Copies<'a> {
    pub(crate) fn check(&mut self, path: &'a str, file: LocalFile) -> anyhow::Result<LocalFile> {
        let units = std::iter::once((&file.name, &file.text));
        for (name, text) in units.chain(file.template.as_ref().map(|(n, t)| (n, t))) {
            match self.first.get(name) {
                Some((first, earlier)) if earlier != text => {
                    bail!("{path}: unit {name} is also given as {first}, with a different file");
                }
                Some(_) => {}
                None => {
                    self.first.insert(name.clone(), (path, text.clone()));
                }
            }
        }
        Ok(file)
    }
}

/// Reads and checks a unit file; an instance with no file of its own is made from the template
/// beside it (`web@3.service` from `web@.service`).
pub(crate) fn read_unit_file(arg: &str) -> anyhow::Result<LocalFile> {
    let path = Path::new(arg);
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{arg}: not a unit file path"))?;
    let name = UnitName::parse(file_name).with_context(|| format!("{arg}: bad unit name"))?;
    let template = name.template().filter(|_| !path.exists());
    let source = match &template {
        Some(template) => path.with_file_name(template.as_str()),
        None => path.to_path_buf(),
    };
    let metadata =
        std::fs::metadata(&source).with_context(|| format!("{}: cannot read", source.display()))?;
    if metadata.len() > MAX_FILE_SIZE {
        bail!("{}: file is {} bytes, larger than 1 MiB", source.display(), metadata.len());
    }
    let bytes =
        std::fs::read(&source).with_context(|| format!("{}: cannot read", source.display()))?;
    let file =
        unit::UnitFile::parse(&name, &bytes).with_context(|| format!("{}", source.display()))?;
    unit::FleetOptions::from_unit(&name, &file).with_context(|| format!("{}", source.display()))?;
    // JSON escapes some characters into several bytes: a file under the size limit may still
    // make a record etcd would refuse, and verify must say so as submit would.
    let record = crate::keyspace::UnitRecord {
        version: crate::keyspace::RECORD_VERSION,
        hash: String::new(),
        text: file.text().to_string(),
    };
    let encoded = crate::keyspace::encode(&record).len() + 64;
    if encoded > crate::store::MAX_VALUE_BYTES {
        bail!(
            "{}: takes {encoded} bytes once encoded for etcd (at most {})",
            source.display(),
            crate::store::MAX_VALUE_BYTES
        );
    }
    if name.suffix() == ".container" {
        crate::container::ContainerSpec::from_unit(&file)
            .with_context(|| format!("{}", source.display()))?;
    }
    let text = file.text().to_string();
    // As fleetctl does, the template goes into the cluster with its first instance.
    let template = template.map(|t| (t, text.clone()));
    Ok(LocalFile { name, text, template })
}

/// An instance to create from its template's file: (instance name, file text).
pub(crate) type NewInstance = (UnitName, String);

/// Resolves names and globs against the units in the cluster.
///
/// A plain name that is not in the cluster is an error, except an instance whose template is:
/// the instance is then made from the template and returned in `to_submit`.
pub(crate) fn resolve(
    view: &View,
    args: &[String],
) -> anyhow::Result<(Vec<UnitName>, Vec<NewInstance>)> {
    let mut names = Vec::new();
    let mut to_submit = Vec::new();
    let mut missing = Vec::new();
    for arg in args {
        if arg.contains(['*', '?', '[']) {
            let glob = Glob::new(arg).with_context(|| format!("bad pattern {arg:?}"))?;
            let matcher = glob.compile_matcher();
            let matched: Vec<_> =
                view.units.keys().filter(|n| matcher.is_match(n.as_str())).cloned().collect();
            if matched.is_empty() {
                missing.push(format!("no unit matches {arg:?}"));
            }
            names.extend(matched);
            continue;
        }
        let name = UnitName::parse(arg)?;
        if view.units.contains_key(&name) {
            names.push(name);
            continue;
        }
        let template = name.template().and_then(|t| view.units.get(&t));
        match template {
            Some(record) => {
                to_submit.push((name.clone(), record.text.clone()));
                names.push(name);
            }
            None => missing.push(format!("unit {name} does not exist")),
        }
    }
    refuse_missing(missing)?;
    names.sort();
    names.dedup();
    Ok((names, to_submit))
}

/// Fails naming every argument that matched no unit, so that one run shows them all.
pub(crate) fn refuse_missing(missing: Vec<String>) -> anyhow::Result<()> {
    fail_naming_all(&missing, "arguments match no unit")
}

/// Fails with every one of `failures`, so that one run shows them all; `several` says what
/// they are when there is more than one.
pub(crate) fn fail_naming_all(failures: &[String], several: &str) -> anyhow::Result<()> {
    match failures {
        [] => Ok(()),
        [one] => bail!("{one}"),
        many => bail!("{} {several}: {}", many.len(), many.join("; ")),
    }
}

/// Resolves names and globs to units that are in the cluster, in the order given.
pub(crate) fn existing(view: &View, args: &[String]) -> anyhow::Result<Vec<UnitName>> {
    let mut names: Vec<UnitName> = Vec::new();
    let mut missing = Vec::new();
    for arg in args {
        let matched = match resolve(view, std::slice::from_ref(arg)) {
            Ok((matched, _)) => matched,
            Err(error) => {
                missing.push(format!("{error:#}"));
                continue;
            }
        };
        for name in matched {
            if !view.units.contains_key(&name) {
                missing.push(format!("unit {name} does not exist"));
            } else if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    refuse_missing(missing)?;
    Ok(names)
}

/// Text from a unit file made safe for a terminal: control characters are shown escaped, so a
/// Description cannot move the cursor or change colours.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] })
        .collect()
}

/// `abcdef12...` for a machine id, or the whole id with `--full`.
pub(crate) fn short_id(id: &str, full: bool) -> String {
    if full { id.to_string() } else { crate::placement::short_id(id) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(printable("web \u{1b}[31mred\u{7}"), "web \\u{1b}[31mred\\u{7}");
        assert_eq!(printable("café ok"), "café ok");
    }

    #[test]
    fn a_unit_given_twice_must_be_the_same_file_both_times() {
        let file = |name: &str, text: &str| LocalFile {
            name: UnitName::parse(name).unwrap(),
            text: text.to_string(),
            template: None,
        };
        let mut copies = Copies::default();
        assert!(copies.check("a/web.service", file("web.service", "one")).is_ok());
        assert!(copies.check("c/web.service", file("web.service", "one")).is_ok());
        let error = copies.check("b/web.service", file("web.service", "two")).err().unwrap();
        assert_eq!(
            error.to_string(),
            "b/web.service: unit web.service is also given as a/web.service, with a different file"
        );
        // An instance made from a template brings the template's text along.
        let mut instance = file("db@1.service", "x");
        instance.template = Some((UnitName::parse("db@.service").unwrap(), "x".to_string()));
        assert!(copies.check("d/db@1.service", instance).is_ok());
        assert!(copies.check("e/db@.service", file("db@.service", "y")).is_err());
    }

    #[test]
    fn each_verb_s_name_is_the_one_clap_knows() {
        let mut command = <Cli as clap::CommandFactory>::command();
        command.build();
        for args in [
            vec!["flotctl", "list-unit-files"],
            vec!["flotctl", "journal", "x.service"],
            vec!["flotctl", "version"],
            vec!["flotctl", "destroy", "x.service"],
        ] {
            let cli = <Cli as clap::Parser>::parse_from(&args);
            assert!(command.find_subcommand(cli.command.name()).is_some(), "{args:?}");
            assert_eq!(cli.command.name(), args[1]);
        }
    }

    #[test]
    fn short_ids_keep_eight_characters() {
        assert_eq!(short_id("0123456789abcdef0123456789abcdef", false), "01234567...");
        assert_eq!(short_id("0123456789abcdef0123456789abcdef", true).len(), 32);
    }
}

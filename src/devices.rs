//! `kiln devices`: what this build can run on.

use anyhow::Result;
use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct DevicesArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = DevicesFormat::Table)]
    format: DevicesFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum DevicesFormat {
    Table,
    Json,
}

pub fn run(a: DevicesArgs) -> Result<()> {
    let report = kiln_runtime::list_devices();
    match a.format {
        DevicesFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        DevicesFormat::Table => {
            for d in &report.devices {
                println!("{}  {}", d.name, d.model);
                for (k, v) in &d.details {
                    println!("    {k:<20} {v}");
                }
            }
            for n in &report.notes {
                println!("{n}");
            }
        }
    }
    Ok(())
}

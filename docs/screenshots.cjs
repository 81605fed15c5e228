// The README's screenshots of the Dagster UI, taken by docs/screenshots.py once its throwaway
// webserver serves a support job and a failed run: node docs/screenshots.cjs BASE_URL RUN_ID DIR
// (playwright-core from npm, driving Debian's chromium).
const { chromium } = require("playwright-core");

async function main() {
  const [base, runId, dir] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"], // as root, in a container
  });
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  page.setDefaultTimeout(120000); // the first page waits for the code location to load

  // A support job's Launchpad with what "Scaffold missing config" fills in: only support's fields.
  const config = encodeURIComponent("request_id: 2\nreason: ''\n");
  await page.goto(
    `${base}/locations/backup_pipeline/jobs/refuse_request_job/playground/setup?config=${config}`,
  );
  await page.getByText("backup_requests.id of the request to act on").first().waitFor();
  await page.screenshot({ path: `${dir}/launchpad-support-job.png` });

  // Launched as it is: refused before the run exists, in one line naming the field.
  await page.getByRole("button", { name: "Launch Run" }).click();
  await page.getByText("reason: say why in a few words").first().waitFor();
  await page.waitForTimeout(1500); // the dialog fades in
  await page.screenshot({ path: `${dir}/launchpad-blank-reason.png` });

  // A failed backup run, its failure as the operator reads it.
  await page.setViewportSize({ width: 1440, height: 1000 });
  await page.goto(`${base}/runs/${runId}?logs=type%3ASTEP_FAILURE`);
  await page.getByText("StoreRefused: the folder store").first().waitFor();
  await page.screenshot({ path: `${dir}/failed-run.png` });
  await browser.close();
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});

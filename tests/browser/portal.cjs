// The portal in a real browser (issue 18): Debian's chromium driven by playwright-core, against
// a running demo stack whose portal, SMS file and silent app the Rust test (tests/portal_browser.rs)
// passes in the environment. Two people walk the whole flow:
//
// - in English, JavaScript on, at desktop width: a wrong code then the right one, the accounts
//   (the silent app listed as not answering), all of the previous holder's, the tickets updated
//   in place by the page's script until the summary;
// - in Chinese, JavaScript off, at phone width, by keyboard alone: two ticked accounts, the
//   tickets page refreshing itself until the summary.
//
// On every page: axe-core finds nothing serious or critical, no console error or CSP violation
// appears, and the cookies carry HttpOnly, Secure and SameSite=Strict. A screenshot of each step
// is written to SHOTS (docs/portal/ when the screenshots are to be renewed). Any failure exits non-zero with the reason.
"use strict";

const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const PORTAL = mustEnv("PORTAL_URL");
const SMS_FILE = mustEnv("SMS_FILE");
const SHOTS = mustEnv("SHOTS");
const CHROMIUM = mustEnv("CHROMIUM");
const SILENT_APP_NAME = mustEnv("SILENT_APP_NAME");
const AXE_SOURCE = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

function mustEnv(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

function fail(message) {
  throw new Error(message);
}

/** The verification codes the phone has received so far, oldest first. */
function codesSentTo(phone) {
  let text = "";
  try {
    text = fs.readFileSync(SMS_FILE, "utf8");
  } catch (e) {
    return [];
  }
  return text
    .split("\n")
    .filter((line) => line.trim())
    .map((line) => JSON.parse(line))
    .filter((m) => m.phone_number === phone && m.code)
    .map((m) => m.code);
}

/** Waits (at most 10 s) until the phone has received more than `before` codes; the newest. */
async function newCode(phone, before) {
  const deadline = Date.now() + 10000;
  for (;;) {
    const codes = codesSentTo(phone);
    if (codes.length > before) {
      return codes[codes.length - 1];
    }
    if (Date.now() > deadline) {
      fail(`no SMS code reached ${phone.slice(0, 6)}…`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits (at most `ms`) until the page's text holds `text`, across reloads. */
async function waitForText(page, text, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      const body = await page.textContent("body");
      if (body && body.includes(text)) {
        return;
      }
    } catch (e) {
      // The page was reloading: look again.
    }
    if (Date.now() > deadline) {
      fail(`"${text}" did not appear on ${page.url()} within ${ms} ms`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** axe-core on the page as it is: no serious or critical finding. */
async function checkAccessibility(page, step) {
  let target = page;
  let checker = null;
  if (page.noScript) {
    // axe needs JavaScript (its timers do not run in a page without it): the same page, with
    // the same cookies (the same visit), in a context of its own with JavaScript on.
    checker = await page.context().browser().newContext({ locale: page.locale });
    await checker.addCookies(await page.context().cookies());
    target = await checker.newPage();
    await target.goto(page.url());
  }
  // Evaluated through the driver, which the page's CSP does not govern (it would refuse an
  // injected <script>, as it should).
  await target.evaluate(AXE_SOURCE);
  const result = await target.evaluate(() =>
    window.axe.run(document, { resultTypes: ["violations"] }),
  );
  if (checker) await checker.close();
  const serious = result.violations.filter((v) => ["serious", "critical"].includes(v.impact));
  if (serious.length) {
    fail(
      `${step}: accessibility: ` +
        serious.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target).join(", ")}`).join("; "),
    );
  }
}

/** What every page answers with. */
function checkHeaders(response, step) {
  const headers = response.headers();
  const csp = headers["content-security-policy"] || "";
  for (const directive of ["default-src 'none'", "script-src 'self'", "form-action 'self'", "frame-ancestors 'none'"]) {
    if (!csp.includes(directive)) {
      fail(`${step}: CSP without ${directive}: ${csp}`);
    }
  }
  if (headers["cache-control"] !== "no-store") fail(`${step}: cache-control ${headers["cache-control"]}`);
  if (headers["referrer-policy"] !== "no-referrer") fail(`${step}: referrer-policy`);
}

async function checkCookies(context, step) {
  const cookies = await context.cookies();
  const visitor = cookies.find((c) => c.name === "uv");
  if (!visitor) fail(`${step}: no visitor cookie`);
  for (const c of cookies) {
    if (!c.httpOnly || !c.secure || c.sameSite !== "Strict") {
      fail(`${step}: cookie ${c.name} is not HttpOnly, Secure and SameSite=Strict`);
    }
  }
}

async function shot(page, name) {
  console.error(`browser test: ${name}`);
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

/** A page that records console errors (a CSP violation is one) and every URL it visits. */
async function newPage(browser, options) {
  const context = await browser.newContext(options);
  const page = await context.newPage();
  const problems = [];
  const urls = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("framenavigated", (f) => {
    if (f === page.mainFrame()) urls.push(f.url());
  });
  return { context, page, problems, urls };
}

function checkClean(visit, secrets, who) {
  if (visit.problems.length) fail(`${who}: console errors: ${visit.problems.join(" | ")}`);
  for (const url of visit.urls) {
    for (const secret of secrets) {
      if (url.includes(secret)) fail(`${who}: a URL holds a secret: ${url}`);
    }
  }
}

async function english(browser) {
  const phone = "+8613800138000";
  const visit = await newPage(browser, {
    locale: "en-GB",
    viewport: { width: 1280, height: 900 },
  });
  const { context, page } = visit;
  const response = await page.goto(PORTAL + "/");
  checkHeaders(response, "en start");
  await checkCookies(context, "en start");
  await checkAccessibility(page, "en start");
  await shot(page, "1-start-desktop");

  const before = codesSentTo(phone).length;
  await page.fill("#phone", "13800138000");
  await page.fill("#id_last_six", "12345X");
  await Promise.all([page.waitForURL("**/code"), page.click("form[action='/start'] button")]);
  const code = await newCode(phone, before);
  await checkAccessibility(page, "en code");

  // A wrong code first.
  await page.fill("#code", code === "000000" ? "111111" : "000000");
  await Promise.all([page.waitForURL("**/code"), page.click("form[action='/code'] button")]);
  await waitForText(page, "That is not the code we sent", 5000);
  await checkAccessibility(page, "en wrong code");
  await shot(page, "2-wrong-code-desktop");
  if ((await page.inputValue("#code")) !== "") fail("the code field kept what was typed");

  await page.fill("#code", code);
  await Promise.all([page.waitForURL("**/accounts"), page.click("form[action='/code'] button")]);
  await shot(page, "3-accounts-arriving-desktop");
  await page.waitForSelector("button[value='previous']", { timeout: 30000 });
  await waitForText(page, "This number has been yours since 1 March 2024.", 1000);
  const silent = await page.textContent(".group.silent");
  if (!silent || !silent.includes(SILENT_APP_NAME)) fail(`the silent app is not listed: ${silent}`);
  await checkAccessibility(page, "en accounts");
  await shot(page, "4-accounts-desktop");

  await Promise.all([page.waitForURL("**/confirm"), page.click("button[value='previous']")]);
  await checkAccessibility(page, "en confirm");
  await shot(page, "5-confirm-desktop");
  await Promise.all([page.waitForURL("**/tickets"), page.click("form[action='/confirm'] button")]);
  await shot(page, "6-tickets-under-way-desktop");
  // With JavaScript the page stays where it is and its live part is updated in place.
  const url = page.url();
  await waitForText(page, "All the unbinds you asked for have ended.", 60000);
  if (page.url() !== url) fail("the tickets page navigated instead of updating in place");
  await checkAccessibility(page, "en summary");
  await shot(page, "7-summary-desktop");
  checkClean(visit, ["13800138000", "12345X", code], "en");
  await context.close();
}

async function chinese(browser) {
  const phone = "+8613900139000";
  const visit = await newPage(browser, {
    locale: "zh-CN",
    javaScriptEnabled: false,
    viewport: { width: 390, height: 844 },
    isMobile: true,
    hasTouch: true,
  });
  const { context, page } = visit;
  page.noScript = true;
  page.locale = "zh-CN";
  const response = await page.goto(PORTAL + "/");
  checkHeaders(response, "zh start");
  await waitForText(page, "哪些应用账号绑定了您的号码？", 1000);
  await checkAccessibility(page, "zh start");
  await shot(page, "1-start-phone-zh");

  // Keyboard only: Tab to the number field, type, Tab to the ID field, type, Enter.
  for (let i = 0; i < 10; i++) {
    await page.keyboard.press("Tab");
    if ((await page.evaluate(() => document.activeElement && document.activeElement.id)) === "phone") break;
  }
  if ((await page.evaluate(() => document.activeElement.id)) !== "phone") fail("Tab never reached the number field");
  const before = codesSentTo(phone).length;
  await page.keyboard.type("13900139000");
  await page.keyboard.press("Tab");
  if ((await page.evaluate(() => document.activeElement.id)) !== "id_last_six") fail("Tab did not lead to the ID field");
  await page.keyboard.type("154321");
  await Promise.all([page.waitForURL("**/code"), page.keyboard.press("Enter")]);
  const code = await newCode(phone, before);
  await page.focus("#code");
  await page.keyboard.type(code);
  await Promise.all([page.waitForURL("**/accounts"), page.keyboard.press("Enter")]);

  // Without JavaScript the page refreshes itself until every app has answered.
  await waitForText(page, "自 2019年6月15日 起，这个号码归您使用。", 5000);
  await page.waitForSelector("input[name='acct']", { timeout: 30000 });
  await checkAccessibility(page, "zh accounts");
  await shot(page, "4-accounts-phone-zh");
  const boxes = await page.$$("input[name='acct']");
  if (boxes.length < 2) fail("fewer than two accounts to tick");
  await boxes[0].check();
  await boxes[1].check();
  await Promise.all([page.waitForURL("**/confirm"), page.click("button[value='ticked']")]);
  await waitForText(page, "您将让号码与 2 个账号解除绑定。", 1000);
  await shot(page, "5-confirm-phone-zh");
  await Promise.all([page.waitForURL("**/tickets"), page.click("form[action='/confirm'] button")]);
  await waitForText(page, "您申请的解绑已全部结束。", 60000);
  await checkAccessibility(page, "zh summary");
  await shot(page, "7-summary-phone-zh");
  await checkCookies(context, "zh summary");
  checkClean(visit, ["13900139000", "154321", code], "zh");
  await context.close();
}

(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  try {
    await english(browser);
    await chinese(browser);
  } finally {
    await browser.close();
  }
  console.log("browser test passed");
})().catch((e) => {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
});

// The portal in a real browser (issue 18): Debian's chromium driven by playwright-core, against
// a running `demo` whose portal, SMS file and silent app the Rust test (tests/portal_browser.rs)
// passes in the environment. Four people walk the whole flow (a wrong code then the right one,
// the accounts with the silent app listed as not answering, a choice, confirm, the tickets to
// the summary): in English and in Chinese, each once with JavaScript (the page's live parts
// updated in place) and once without (the pages refreshing themselves), at desktop and phone
// widths, by mouse and by keyboard alone; some unbind all of the previous holder's accounts,
// some two of their own.
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

/** What each language says at the steps the walk checks. */
const WORDS = {
  en: {
    start: "Which app accounts use your number?",
    wrongCode: "That is not the code we sent",
    confirmTwo: "You are about to release your number from 2 accounts.",
    done: "All the unbinds you asked for have ended.",
  },
  zh: {
    start: "哪些应用账号绑定了您的号码？",
    wrongCode: "验证码不正确。",
    confirmTwo: "您将让号码与 2 个账号解除绑定。",
    done: "您申请的解绑已全部结束。",
  },
};

const DESKTOP = { viewport: { width: 1280, height: 900 } };
const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true };

/**
 * One person's whole visit: number and ID characters, a wrong code then the right one, the
 * accounts (the silent app listed as not answering), a choice (`previous`: all of the previous
 * holder's; `two`: two of the holder's own), confirm, the tickets followed to the summary.
 * `w.shots` names the screenshots' suffix (none: no screenshots); `w.keyboard` types and submits
 * by keyboard alone.
 */
async function walk(browser, w) {
  const who = `${w.lang}${w.js ? "" : " without JavaScript"}`;
  const words = WORDS[w.lang];
  const locale = w.lang === "zh" ? "zh-CN" : "en-GB";
  const visit = await newPage(browser, { locale, javaScriptEnabled: w.js, ...w.device });
  const { context, page } = visit;
  page.noScript = !w.js;
  page.locale = locale;
  const snap = async (step) => {
    if (w.shots) await shot(page, `${step}-${w.shots}`);
    else console.error(`browser test: ${who}: ${step}`);
  };

  const response = await page.goto(PORTAL + "/");
  checkHeaders(response, `${who} start`);
  await checkCookies(context, `${who} start`);
  await waitForText(page, words.start, 1000);
  await checkAccessibility(page, `${who} start`);
  await snap("1-start");

  let before = codesSentTo(w.phone).length;
  if (w.keyboard) {
    // Keyboard only: Tab to the number field, type, Tab to the ID field, type, Enter.
    for (let i = 0; i < 10; i++) {
      await page.keyboard.press("Tab");
      if ((await page.evaluate(() => document.activeElement && document.activeElement.id)) === "phone") break;
    }
    if ((await page.evaluate(() => document.activeElement.id)) !== "phone") fail(`${who}: Tab never reached the number field`);
    await page.keyboard.type(w.bare);
    await page.keyboard.press("Tab");
    if ((await page.evaluate(() => document.activeElement.id)) !== "id_last_six") fail(`${who}: Tab did not lead to the ID field`);
    await page.keyboard.type(w.id);
    await Promise.all([page.waitForURL("**/code"), page.keyboard.press("Enter")]);
  } else {
    await page.fill("#phone", w.bare);
    await page.fill("#id_last_six", w.id);
    await Promise.all([page.waitForURL("**/code"), page.click("form[action='/start'] button")]);
  }
  const code = await newCode(w.phone, before);
  await checkAccessibility(page, `${who} code`);

  // A wrong code first: said plainly, the field emptied, the visit goes on.
  const wrong = code === "000000" ? "111111" : "000000";
  const typeCode = async (digits) => {
    if (w.keyboard) {
      await page.focus("#code");
      await page.keyboard.type(digits);
      return page.keyboard.press("Enter");
    }
    await page.fill("#code", digits);
    return page.click("form[action='/code'] button");
  };
  await Promise.all([page.waitForURL("**/code"), typeCode(wrong)]);
  await waitForText(page, words.wrongCode, 5000);
  if ((await page.inputValue("#code")) !== "") fail(`${who}: the code field kept what was typed`);
  await checkAccessibility(page, `${who} wrong code`);
  await snap("2-wrong-code");

  await Promise.all([page.waitForURL("**/accounts"), typeCode(code)]);
  if (w.js) await snap("3-accounts-arriving");
  // The accounts can be chosen once every app has answered or timed out (with JavaScript the
  // page's live part fills in; without, the page refreshes itself until then).
  await waitForText(page, w.since, 5000);
  await page.waitForSelector("input[name='acct']", { timeout: 30000 });
  const silent = await page.textContent(".group.silent");
  if (!silent || !silent.includes(SILENT_APP_NAME)) fail(`${who}: the silent app is not listed: ${silent}`);
  await checkAccessibility(page, `${who} accounts`);
  await snap("4-accounts");

  if (w.pick === "previous") {
    await Promise.all([page.waitForURL("**/confirm"), page.click("button[value='previous']")]);
  } else {
    const boxes = await page.$$(".group.yours input[name='acct']");
    if (boxes.length < 2) fail(`${who}: fewer than two of the holder's accounts to tick`);
    await boxes[0].check();
    await boxes[1].check();
    await Promise.all([page.waitForURL("**/confirm"), page.click("button[value='ticked']")]);
    await waitForText(page, words.confirmTwo, 1000);
  }
  await checkAccessibility(page, `${who} confirm`);
  await snap("5-confirm");
  await Promise.all([page.waitForURL("**/tickets"), page.click("form[action='/confirm'] button")]);
  if (w.js) await snap("6-tickets-under-way");
  const url = page.url();
  await waitForText(page, words.done, 60000);
  // With JavaScript the page stays where it is and its live part is updated in place.
  if (w.js && page.url() !== url) fail(`${who}: the tickets page navigated instead of updating in place`);
  await checkAccessibility(page, `${who} summary`);
  await snap("7-summary");
  await checkCookies(context, `${who} summary`);
  checkClean(visit, [w.bare, w.id, code], who);
  await context.close();
}

(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  try {
    // The screenshots the README shows come from the first two.
    await walk(browser, {
      lang: "en", js: true, device: DESKTOP, shots: "desktop",
      phone: "+8613800138000", bare: "13800138000", id: "12345X",
      since: "This number has been yours since 1 March 2024.", pick: "previous",
    });
    await walk(browser, {
      lang: "zh", js: false, device: PHONE, shots: "phone-zh", keyboard: true,
      phone: "+8613900139000", bare: "13900139000", id: "154321",
      since: "自 2019年6月15日 起，这个号码归您使用。", pick: "two",
    });
    await walk(browser, {
      lang: "zh", js: true, device: PHONE,
      phone: "+8618612345678", bare: "18612345678", id: "30012X",
      since: "自 2025年11月1日 起，这个号码归您使用。", pick: "previous",
    });
    await walk(browser, {
      lang: "en", js: false, device: DESKTOP, keyboard: true,
      phone: "+8613800138000", bare: "13800138000", id: "12345X",
      since: "This number has been yours since 1 March 2024.", pick: "two",
    });
  } finally {
    await browser.close();
  }
  console.log("browser test passed");
})().catch((e) => {
  console.error(String(e && e.stack ? e.stack : e));
  process.exit(1);
});

#!/usr/bin/python3
"""Walks swiftdrop's queue web view in a real headless Chromium (Selenium, chromedriver):
the overview, a state's list, one message, then its Requeue form with the admin token.

    browse.py BASE_URL STATE TOKEN OUTDIR

Saves a screenshot of each page in OUTDIR and prints one JSON object: the screenshots, the
titles seen, whether any script ran (none may: the page has none and the message's own
HTML is escaped) and the outcome text after the requeue.
"""
import json
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def main():
    base, state, token, outdir = sys.argv[1:5]
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    shots, titles = [], []

    def shoot(name):
        path = f"{outdir}/{name}.png"
        driver.save_screenshot(path)
        shots.append(path)
        titles.append(driver.title)

    try:
        driver.get(f"{base}/queue")
        shoot("overview")
        driver.find_element(By.LINK_TEXT, f"{state}/").click()
        shoot("list")
        driver.find_element(By.CSS_SELECTOR, "td.key a").click()
        shoot("message")
        # A script in the message would have set this; the page itself has none. The
        # message's <script> and <img> are text, not elements.
        scripted = driver.execute_script("return window.swiftdropInjected === true")
        elements = {tag: len(driver.find_elements(By.TAG_NAME, tag)) for tag in ("script", "img")}
        literal = "<script>window.swiftdropInjected = true</script>" in driver.find_element(
            By.TAG_NAME, "body").text
        driver.find_element(By.NAME, "token").send_keys(token)
        driver.find_element(By.NAME, "confirm").click()
        driver.find_element(By.ID, "requeue").click()
        shoot("requeued")
        outcome = driver.find_element(By.ID, "outcome").text
    finally:
        driver.quit()
    print(json.dumps({"screenshots": shots, "titles": titles, "scripted": scripted,
                      "elements": elements, "literal": literal, "outcome": outcome}))


if __name__ == "__main__":
    main()

// The OHIF viewer signed in as the dashboard is: the gateway appends this to the viewer's
// configuration (/viewer/app-config.js, after `window.config = {…};`; api_gateway/routes/
// viewer.py), so no inline script is needed.
//
// The dashboard keeps its credential (an API key, or the issuer's access token) in this tab's
// sessionStorage (session.js), and a viewer it opens starts with a copy of it. OHIF asks its
// userAuthenticationService for the Authorization header of every DICOMweb request (QIDO-RS,
// WADO-RS metadata, frames, thumbnails); this sets that service to answer with the credential.
// OHIF hands the services to a configuration that is a function, before it reads the rest,
// and the data source's onConfiguration runs before its first request, so the header is
// there from the start. Without a credential there is none, and a gateway with access control
// answers 401: the viewer then sends the browser to the dashboard's sign-in, which comes back
// here once signed in (signin.js). A credential never goes in a URL.

(() => {
  const KEY = "dicomflow.credential"; // the dashboard's session.js
  const RETURN = "dicomflow.return"; // the dashboard's signin.js: the page to come back to
  const config = window.config;

  /** The header OHIF sends, or nothing. */
  function authorization() {
    try {
      const credential = JSON.parse(sessionStorage.getItem(KEY));
      if (credential && typeof credential.token === "string" && credential.token) {
        return { Authorization: `Bearer ${credential.token}` };
      }
    } catch {
      // no storage (a sandboxed frame), or nothing of ours in it
    }
    return undefined;
  }

  let leaving = false;

  /** The gateway refused (401): sign in on the dashboard, in this tab, and come back. */
  function signIn() {
    if (leaving) return;
    leaving = true;
    try {
      sessionStorage.setItem(RETURN, `${location.pathname}${location.search}`);
    } catch {
      // then the dashboard stays where it is once signed in
    }
    location.replace("/");
  }

  // OHIF calls this with each failed request (its status, for DICOMweb and image loads alike)
  config.httpErrorHandler = (error) => {
    if (error?.status === 401) signIn();
  };

  function configure({ servicesManager }) {
    for (const source of config.dataSources ?? []) {
      source.configuration.onConfiguration = (dicomWebConfig) => {
        servicesManager.services.userAuthenticationService?.setServiceImplementation({
          getAuthorizationHeader: authorization,
        });
        return dicomWebConfig;
      };
    }
    return config;
  }

  // OHIF reads a few settings from window.config itself (routerBasename, dataSources) before
  // it calls it: they stay readable on the function.
  for (const [name, value] of Object.entries(config)) {
    if (name !== "name" && name !== "length") configure[name] = value;
  }
  window.config = configure;
})();

'use strict';
const pad = require('kiln-pad');

/** A build number, zero-padded to six digits. */
exports.label = (n) => 'build-' + pad(n, 6, '0');

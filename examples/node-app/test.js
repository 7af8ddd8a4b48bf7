'use strict';
const assert = require('assert');
const { label } = require('./index');

assert.strictEqual(label(42), 'build-000042');
assert.strictEqual(label(1234567), 'build-1234567');
console.log('node-app: 2 tests passed');

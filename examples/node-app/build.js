'use strict';
const fs = require('fs');
const { label } = require('./index');

fs.mkdirSync('dist', { recursive: true });
fs.writeFileSync('dist/label.txt', label(7) + '\n');
console.log('node-app: built dist/label.txt');
